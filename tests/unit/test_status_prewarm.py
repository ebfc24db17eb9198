"""A target's prewarm in the KernelWarmup's status (core/status.py, status_report.prewarm_message)
and the gate's answer for a multi-Pod world (prewarm.Prewarmer): Prewarming is waiting, not
degraded; a refused rollout is Degraded with the Job's reason; the entry survives a restart
while the hash holds; a LeaderWorkerSet keeps init-container warmup and says so."""

from __future__ import annotations

from support.workloads import spec_doc

from warmup_operator.core.decide import CRRecord, Decision
from warmup_operator.core.kernelwarmup import parse_spec
from warmup_operator.core.kinds import LEADERWORKERSET
from warmup_operator.core.status import StatusInputs, TargetState, carry_prewarm, compute_status
from warmup_operator.prewarm import Prewarmer
from warmup_operator.status_report import prewarm_message

NOW = "2026-11-27T12:00:00Z"
WAIT = {"phase": "Prewarming", "hash": "h1", "jobs": ["kwp-llm-1"], "message": "waiting for prewarm Job(s) kwp-llm-1"}
FAILED = {"phase": "TimedOut", "hash": "h1", "jobs": ["kwp-llm-1"], "reason": "DeadlineExceeded",
          "message": "prewarm Job kwp-llm-1 timed out (DeadlineExceeded); failurePolicy Fail: not rolled out"}


def conditions(*targets):
    status = compute_status(StatusInputs(1, list(targets)), None, NOW)
    return {c["type"]: c for c in status["conditions"]}, status


def state(pw, injected=False):
    msg, reason = prewarm_message(pw, injected, "", "")
    return TargetState("Deployment", "llm", injected, "h1", message=msg, reason=reason, prewarm=pw)


def test_prewarming_is_waiting_not_degraded():
    conds, status = conditions(state(WAIT))
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "Prewarming"
    assert conds["Degraded"]["status"] == "False"
    assert status["targets"][0]["prewarm"]["jobs"] == ["kwp-llm-1"] and status["targets"][0]["reason"] == "Prewarming"


def test_a_refused_rollout_is_degraded_with_the_jobs_reason():
    conds, _ = conditions(state(FAILED))
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "PrewarmTimedOut"
    assert "DeadlineExceeded" in conds["Degraded"]["message"]


def test_rolled_out_anyway_is_a_warning_on_an_injected_target():
    ignored = {**FAILED, "message": "prewarm Job kwp-llm-1 failed (BackoffLimitExceeded); failurePolicy Ignore: "
                                    "rolled out anyway", "phase": "Failed"}
    conds, _ = conditions(state(ignored, injected=True))
    assert conds["Ready"]["status"] == "True" and conds["Degraded"]["reason"] == "Warning"


def test_the_entry_survives_a_restart_while_the_hash_holds():
    done = {"phase": "Succeeded", "hash": "h1", "jobs": ["kwp-llm-1"]}
    previous = {"targets": [{"kind": "Deployment", "name": "llm", "hash": "h1", "injected": True, "prewarm": done}]}
    now = [{"kind": "Deployment", "name": "llm", "hash": "h1", "injected": True}]
    assert carry_prewarm(now, previous)[0]["prewarm"] == done
    assert "prewarm" not in carry_prewarm([{**now[0], "hash": "h2"}], previous)[0]  # a new hash: not that Job's


def test_a_leaderworkerset_keeps_init_container_warmup_and_says_so():
    spec = parse_spec(spec_doc(cache={"persistentVolumeClaim": {"claimName": "c"}}))

    class NoApi:
        def __getattr__(self, name):
            raise AssertionError(f"no API call expected ({name})")

    p = Prewarmer(NoApi(), lambda *a: None, "img")
    d = Decision("inject", "LeaderWorkerSet", "lws", "ns", owner="kw", hash="h1")
    verdict = p.gate(LEADERWORKERSET, {"metadata": {"name": "lws", "namespace": "ns"}}, d,
                     CRRecord("kw", "ns", uid="u"), spec)
    assert verdict.action == "apply" and verdict.phase == "NotUsed"
    view = p.view("LeaderWorkerSet", "ns", "lws", "h1")
    assert view["phase"] == "NotUsed" and "multi-Pod world" in view["message"]
    assert prewarm_message(view, True, "", "") == ("", "")  # not a warning: the status entry says it


def test_the_admission_gate_holds_a_hash_until_its_prewarm_passed():
    cr = CRRecord("kw", "ns", uid="u", spec=spec_doc(cache={"persistentVolumeClaim": {"claimName": "c"}}))
    empty = CRRecord("kw2", "ns", uid="u2", spec=spec_doc())  # emptyDir: no prewarm, never held
    p = Prewarmer(None, lambda *a: None, "img", crs=lambda: [cr, empty])
    d = Decision("inject", "Deployment", "llm", "ns", owner="kw", hash="h1")
    assert "pending" in p.hold_reason(d)
    assert p.hold_reason(Decision("inject", "Deployment", "other", "ns", owner="kw2", hash="h9")) is None
    assert p.hold_reason(Decision("remove", "Deployment", "llm", "ns", owner="kw")) is None
    from warmup_operator.core.prewarm import Verdict
    p._remember(("Deployment", "ns", "llm"), Verdict("apply", "Succeeded"), "h1")  # the gate let h1 through
    assert p.hold_reason(d) is None
    assert "pending" in p.hold_reason(Decision("inject", "Deployment", "llm", "ns", owner="kw", hash="h2"))


def test_the_prewarmer_forgets_finished_jobs_that_are_gone():
    """One finished Job per rollout: what the Prewarmer remembers about finished Jobs (to
    announce each once) is dropped once the Job is gone from the API, so a long-running
    operator's memory does not grow with every rollout; a Job still listed is not announced
    twice."""
    from warmup_operator.core import names
    from warmup_operator.core.kinds import DEPLOYMENT

    cache = {"persistentVolumeClaim": {"claimName": "c"}}
    spec = parse_spec(spec_doc(cache=cache))
    cr = CRRecord("kw", "ns", uid="u", spec=spec_doc(cache=cache))
    live = {"metadata": {"name": "llm", "namespace": "ns"},
            "spec": {"template": {"spec": {"containers": [{"name": "vllm", "image": "vllm"}]}}}}

    def finished(uid, hash_):
        return {"metadata": {"name": f"kwp-{uid}", "uid": uid, "labels": {names.LABEL_PREWARM_HASH: hash_},
                             "creationTimestamp": NOW},
                "status": {"startTime": NOW, "completionTime": NOW,
                           "conditions": [{"type": "Complete", "status": "True"}]}}

    class Api:  # only what gate() asks for a finished Job of the current hash
        jobs: list = []

        def list_jobs(self, namespace, selector):
            return list(self.jobs)

        def list_pods(self, namespace, selector):
            return []

        def delete_job(self, namespace, name):
            self.jobs = [j for j in self.jobs if j["metadata"]["name"] != name]

    api, events = Api(), []
    p = Prewarmer(api, lambda ref, kind, reason, msg: events.append(reason), "img")
    for i in range(50):
        api.jobs = [finished(f"uid{i}", f"h{i}")]  # the previous rollout's Job is gone (TTL)
        d = Decision("inject", "Deployment", "llm", "ns", owner="kw", hash=f"h{i}")
        for _ in range(2):  # reconciled twice while the Job is listed: announced once
            assert p.gate(DEPLOYMENT, live, d, cr, spec).action == "apply"
        assert p._announced == {f"uid{i}"} and set(p._summaries) == {f"uid{i}"}
    assert events == ["PrewarmSucceeded"] * 50


def _jobs_world(n_running, pods):
    """A target with ``n_running`` running Jobs of hash h1 (and the given Pods), counting calls."""
    from warmup_operator.core import names

    def running(i):
        return {"metadata": {"name": f"kwp-{i}", "uid": f"uid{i}", "labels": {names.LABEL_PREWARM_HASH: "h1"},
                             "creationTimestamp": NOW}, "status": {"startTime": NOW}}

    class Api:
        calls: list = []

        def list_jobs(self, namespace, selector):
            self.calls.append("list_jobs")
            return [running(i) for i in range(n_running)]

        def list_pods(self, namespace, selector):
            self.calls.append("list_pods")
            return pods

    return Api()


def _gate(api, summaries=None):
    from warmup_operator.core.kinds import DEPLOYMENT
    cache = {"persistentVolumeClaim": {"claimName": "c"}}
    cr = CRRecord("kw", "ns", uid="u", spec=spec_doc(cache=cache))
    live = {"metadata": {"name": "llm", "namespace": "ns"},
            "spec": {"template": {"spec": {"containers": [{"name": "vllm", "image": "vllm"}]}}}}
    p = Prewarmer(api, lambda *a: None, "img")
    d = Decision("inject", "Deployment", "llm", "ns", owner="kw", hash="h1")
    return p, p.gate(DEPLOYMENT, live, d, cr, parse_spec(spec_doc(cache=cache)))


def test_the_gate_lists_pods_once_whatever_the_number_of_jobs():
    """Issue 25 item 3: the holder listed Pods once per running Job (O(Jobs) calls per
    reconcile, O(Jobs^2) per burst of Job events); now one list for all of a target's Jobs."""
    for n in (1, 10, 150):
        api = _jobs_world(n, [])
        _, verdict = _gate(api)
        assert verdict.action == "hold" and api.calls == ["list_jobs", "list_pods"], (n, api.calls)
        api.calls.clear()


def test_a_pod_with_the_jobs_label_but_not_owned_by_it_is_not_read():
    """Issue 25, Low: the prewarm summary came from any Pod carrying the Job's name label."""
    import json

    from warmup_operator.core import names
    from warmup_operator.core.prewarm import pods_by_job

    summary = json.dumps({"schema": 1, "status": "failed"})
    forged = {"metadata": {"name": "forged", "labels": {names.LABEL_JOB_NAME: "kwp-0"}},
              "status": {"containerStatuses": [{"state": {"terminated": {"message": summary}}}]}}
    owned = {"metadata": {"name": "real", "ownerReferences": [{"kind": "Job", "uid": "uid0", "controller": True}]}}
    not_controller = {"metadata": {"name": "x", "ownerReferences": [{"kind": "Job", "uid": "uid0"}]}}
    assert pods_by_job([forged, owned, not_controller]) == {"uid0": [owned]}
