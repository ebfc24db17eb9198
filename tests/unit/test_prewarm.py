"""The prewarm core (core/prewarm.py) by table: when a target is prewarmed, the nodes, the
PVC check, pinning to a node, a Job's state, its Pod's summary, and the verdict under
both failure policies."""

from __future__ import annotations

import datetime

import pytest
from support.workloads import spec_doc

from warmup_operator.core import names
from warmup_operator.core import prewarm as pw
from warmup_operator.core.kernelwarmup import SpecInvalid, parse_spec

PVC = {"persistentVolumeClaim": {"claimName": "cache"}}
HOST = {"hostPath": {"path": "/var/cache/kernel-warmup"}}
SEL = {"source": "Selector", "selector": {"matchLabels": {"gpu": "h100"}}}
NOW = datetime.datetime(2026, 11, 27, 12, 0, 0, tzinfo=datetime.timezone.utc)


def spec(cache=None, prewarm=None, **over):
    doc = spec_doc(**over)
    if cache is not None:
        doc["cache"] = cache
    if prewarm is not None:
        doc["prewarm"] = prewarm
    return parse_spec(doc)


@pytest.mark.parametrize("kind,cache,prewarm,use,per_node,note", [
    ("Deployment", PVC, None, True, False, ""),
    ("StatefulSet", PVC, {"enabled": True}, True, False, ""),
    ("Deployment", PVC, {"enabled": False}, False, False, ""),
    ("Deployment", None, None, False, False, ""),  # emptyDir: per Pod, nothing to share
    ("Deployment", HOST, None, False, False, ""),  # hostPath without nodes: no prewarm
    ("Deployment", HOST, {"nodes": SEL}, True, True, ""),
    ("Deployment", HOST, {"nodes": {"source": "WorkloadPods"}}, True, True, ""),
    ("LeaderWorkerSet", PVC, None, False, False, "multi-Pod world"),
])
def test_plan_for(kind, cache, prewarm, use, per_node, note):
    plan = pw.plan_for(kind, spec(cache, prewarm))
    assert (plan.use, plan.per_node) == (use, per_node)
    assert note in plan.note and (bool(plan.note) == bool(note))


@pytest.mark.parametrize("prewarm,timeout,expected", [
    (None, None, 1800 + pw.PREWARM_TIMEOUT_SLACK_S),
    (None, 60, 60 + pw.PREWARM_TIMEOUT_SLACK_S),
    ({"timeoutSeconds": 90}, None, 90),
])
def test_timeout(prewarm, timeout, expected):
    over = {"timeoutSeconds": timeout} if timeout else {}
    assert pw.timeout_of(spec(PVC, prewarm, **over)) == expected


@pytest.mark.parametrize("prewarm,cache,field", [
    ({"nodes": SEL}, PVC, "spec.prewarm.nodes"),
    ({"nodes": {"source": "Somewhere"}}, HOST, "spec.prewarm.nodes.source"),
    ({"nodes": {"source": "Selector"}}, HOST, "spec.prewarm.nodes.selector"),
    ({"nodes": {"source": "WorkloadPods", "selector": {"matchLabels": {"a": "b"}}}}, HOST, "spec.prewarm.nodes.selector"),
    ({"nodes": {"source": "Selector", "selector": {}}}, HOST, "spec.prewarm.nodes.selector"),
    ({"enabled": "yes"}, PVC, "spec.prewarm.enabled"),
    ({"timeoutSeconds": 0}, PVC, "spec.prewarm.timeoutSeconds"),
    ({"timeoutSeconds": True}, PVC, "spec.prewarm.timeoutSeconds"),
])
def test_bad_prewarm_names_the_field(prewarm, cache, field):
    with pytest.raises(SpecInvalid) as err:
        spec(cache, prewarm)
    assert err.value.field == field


def node(name, **labels):
    return {"metadata": {"name": name, "labels": labels}}


NODES = [node("a", gpu="h100"), node("b", gpu="h200"), node("c", gpu="h100", zone="x")]


@pytest.mark.parametrize("prewarm,pod_nodes,expected", [
    (SEL, [], ["a", "c"]),
    ({"source": "Selector", "selector": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}}, [], ["c"]),
    ({"source": "WorkloadPods"}, ["b", "a", "b", ""], ["a", "b"]),
    (SEL | {"selector": {"matchLabels": {"gpu": "b200"}}}, [], "spec.prewarm.nodes.selector"),
    ({"source": "WorkloadPods"}, ["", ""], "spec.prewarm.nodes.source"),
])
def test_prewarm_nodes(prewarm, pod_nodes, expected):
    got = pw.prewarm_nodes(spec(HOST, {"nodes": prewarm}).prewarm, "Deployment/llm", pod_nodes, NODES)
    if isinstance(expected, str):
        assert isinstance(got, pw.Problem) and got.field == expected and got.reason == "NoPrewarmNodes"
    else:
        assert got == expected


def pvc(*modes, bound=None):
    out = {"spec": {"accessModes": list(modes)}}
    if bound:
        out["status"] = {"accessModes": list(bound)}
    return out


@pytest.mark.parametrize("claim,pod_nodes,replicas,reason", [
    (pvc("ReadWriteMany"), ["a", "b"], 2, None),
    (pvc("ReadWriteOnce"), ["a", "a"], 2, None),  # one node mounts it for both
    (pvc("ReadWriteOnce"), ["a", "b"], 2, "CacheNotShared"),
    (pvc("ReadWriteOnce", bound=["ReadWriteMany"]), ["a", "b"], 2, None),  # the bound volume's modes count
    (pvc("ReadWriteOncePod"), ["a"], 2, "CacheNotShared"),
    (pvc("ReadWriteOncePod"), [], 1, None),
    (None, [], 1, "CacheClaimNotFound"),
])
def test_check_pvc(claim, pod_nodes, replicas, reason):
    got = pw.check_pvc("cache", claim, "Deployment/llm", pod_nodes, replicas)
    assert (got.reason if got else None) == reason
    if got:
        assert got.field == "spec.cache.persistentVolumeClaim.claimName" and "cache" in got.message


@pytest.mark.parametrize("affinity,terms", [
    (None, [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
    ({"podAffinity": {"x": 1}}, [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
    ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "k", "operator": "Exists"}]}]}}},
     [{"matchExpressions": [{"key": "k", "operator": "Exists"}],
       "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
])
def test_pin_to_node(affinity, terms):
    before = repr(affinity)
    out = pw.pin_to_node(affinity, "n1")
    assert out["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == terms
    assert repr(affinity) == before  # the template's own object is not changed


def job(conditions=(), created="2026-11-27T11:59:00Z", start="2026-11-27T11:59:10Z", completion=None, deadline=600):
    st = {"startTime": start, "conditions": [{"type": t, "status": "True", "reason": r,
                                              "lastTransitionTime": "2026-11-27T11:59:40Z"} for t, r in conditions]}
    if completion:
        st["completionTime"] = completion
    return {"metadata": {"name": "j", "uid": "u", "creationTimestamp": created,
                         "annotations": {names.ANN_PREWARM_NODE: "n1"}},
            "spec": {"activeDeadlineSeconds": deadline}, "status": st}


@pytest.mark.parametrize("obj,phase,reason,seconds", [
    (job(), "running", "", None),
    (job([("SuccessCriteriaMet", "CompletionsReached"), ("Complete", "CompletionsReached")],
         completion="2026-11-27T11:59:30Z"), "succeeded", "", 20.0),
    (job([("FailureTarget", "BackoffLimitExceeded"), ("Failed", "BackoffLimitExceeded")]), "failed",
     "BackoffLimitExceeded", 30.0),
    (job([("FailureTarget", "DeadlineExceeded")]), "timeout", "DeadlineExceeded", 30.0),
    (job(created="2026-11-27T11:00:00Z", deadline=60), "timeout", "DeadlineNotEnforced", None),
])
def test_job_state(obj, phase, reason, seconds):
    st = pw.job_state(obj, NOW)
    assert (st.phase, st.reason, st.seconds, st.node) == (phase, reason, seconds, "n1")


def test_pod_summary_and_unschedulable():
    msg = '{"status": "ok", "seconds": 3.5, "cacheKey": "ab", "triton": {"compiled": 2}}'
    pod = {"status": {"containerStatuses": [{"name": names.WARMER_CONTAINER, "state": {"terminated": {"message": msg}}}]}}
    assert pw.pod_summary(pod)["seconds"] == 3.5
    assert pw.pod_summary({"status": {}}) is None
    crash = {"status": {"containerStatuses": [{"name": names.WARMER_CONTAINER,
                                               "state": {"terminated": {"message": "Traceback ..."}}}]}}
    assert pw.pod_summary(crash) is None
    stuck = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                        "message": "0/3 nodes have free nvidia.com/gpu"}]}}
    assert "nvidia.com/gpu" in pw.pod_unschedulable(stuck)
    assert pw.pod_unschedulable({"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}) is None


def result(phase, summary=None, reason="", name="j1", unschedulable=None):
    return pw.JobResult(pw.JobState(name, phase, reason, seconds=12.0), summary, unschedulable)


OK = {"status": "ok", "seconds": 11.0, "cacheKey": "ab", "triton": {"compiled": 3}}
FAILED = {"status": "failed", "error": "triton variant(s) failed", "seconds": 2.0}


@pytest.mark.parametrize("results,policy,action,phase,reason", [
    ([result("running")], "Fail", "hold", "Prewarming", ""),
    ([result("running", unschedulable="no GPU")], "Fail", "hold", "Prewarming", "Unschedulable"),
    ([result("succeeded", OK), result("running", name="j2")], "Fail", "hold", "Prewarming", ""),
    ([result("succeeded", OK), result("succeeded", OK, name="j2")], "Fail", "apply", "Succeeded", ""),
    ([result("succeeded")], "Fail", "apply", "Succeeded", ""),  # no readable summary: the Job's word
    ([result("failed", reason="BackoffLimitExceeded")], "Fail", "block", "Failed", "BackoffLimitExceeded"),
    ([result("failed", reason="BackoffLimitExceeded")], "Ignore", "apply", "Failed", "BackoffLimitExceeded"),
    ([result("timeout", reason="DeadlineExceeded")], "Fail", "block", "TimedOut", "DeadlineExceeded"),
    ([result("timeout", reason="DeadlineExceeded")], "Ignore", "apply", "TimedOut", "DeadlineExceeded"),
    # failurePolicy Ignore: the warmer exits 0 after a failure; the summary says so
    ([result("succeeded", FAILED)], "Ignore", "apply", "Failed", "CompileFailed"),
    ([result("succeeded", FAILED), result("running", name="j2")], "Fail", "block", "Failed", "CompileFailed"),
])
def test_judge(results, policy, action, phase, reason):
    v = pw.judge(results, policy)
    assert (v.action, v.phase, v.reason) == (action, phase, reason)
    assert v.jobs == tuple(sorted(r.state.name for r in results))
    if action == "block":
        assert "failurePolicy Fail" in v.message and "kubectl logs job/" in v.message
    if phase in ("Failed", "TimedOut") and action == "apply":
        assert "failurePolicy Ignore" in v.message


def test_problem_verdict_and_status_entry():
    problem = pw.Problem("spec.prewarm.nodes.selector", "gpu=b200 matches none", "NoPrewarmNodes")
    v = pw.problem_verdict("Fail", problem)
    assert v.action == "block" and "spec.prewarm.nodes.selector" in v.message
    assert pw.problem_verdict("Ignore", problem).action == "apply"
    entry = pw.status_entry(pw.judge([result("succeeded", OK)], "Fail"), "h1")
    assert entry == {"phase": "Succeeded", "hash": "h1", "jobs": ["j1"], "seconds": 12.0,
                     "summary": {"status": "ok", "seconds": 11.0, "cacheKey": "ab",
                                 "triton": {"compiled": 3, "hit": 0, "skipped": 0, "failed": 0}}}


def test_job_names_are_deterministic_and_distinct():
    base = dict(cr_name="kw", cr_uid="u", kind="Deployment", workload="llm", namespace="ns", hash="h1", template={},
                fragment={}, timeout_s=60)
    a = pw.job_name(pw.JobRequest(**base))
    assert a == pw.job_name(pw.JobRequest(**base))
    others = {pw.job_name(pw.JobRequest(**{**base, k: v})) for k, v in
              (("hash", "h2"), ("node", "n1"), ("cr_name", "kw2"), ("kind", "StatefulSet"), ("workload", "llm2"))}
    assert a not in others and len(others) == 5
    long = pw.job_name(pw.JobRequest(**{**base, "workload": "x" * 250}))
    assert len(long) <= 63


@pytest.mark.parametrize("use,desired,live,passed,expected", [
    (False, "h2", "h1", None, "h2"),  # no prewarm: the write carries the new injection
    (True, "h2", "h2", None, "h2"),  # already live
    (True, "h2", "h1", "h2", "h2"),  # its Job passed the gate
    (True, "h2", "h1", None, "h1"),  # pending: keep the previous, warmed injection
    (True, "h2", "h1", "h0", "h1"),
    (True, "h1", None, None, None),  # pending, nothing injected before: none
])
def test_admission_hash(use, desired, live, passed, expected):
    assert pw.admission_hash(pw.Plan(use), desired, live, passed) == expected


def test_a_kernelwarmup_name_over_63_characters_still_labels_its_jobs():
    """Issue 25, Low: a KernelWarmup name over 63 characters could never prewarm (the API
    refused its Job's label with a raw 422)."""
    import re
    base = dict(cr_uid="u", kind="Deployment", workload="llm", namespace="ns", hash="h1", template={},
                fragment={"spec": {"initContainers": [{"name": names.BOOTSTRAP_CONTAINER}, {"name": names.WARMER_CONTAINER}],
                                  "volumes": []}}, timeout_s=60)
    label_value = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    for name in ("kw", "k" * 63, "k" * 64, "a-" * 126 + "b"):
        value = pw.cr_label(name)
        assert len(value) <= 63 and label_value.match(value), name
        assert value == name if len(name) <= 63 else value != pw.cr_label(name + "x")
        job = pw.build_job(pw.JobRequest(cr_name=name, **base))
        assert job["metadata"]["labels"][names.LABEL_PREWARM_CR] == value


def prewarm_job(cr, target, deleting=False, finished=False):
    meta = {"name": f"j-{cr}-{target}", "labels": {names.LABEL_PREWARM_CR: cr, names.LABEL_PREWARM_TARGET: target},
            "creationTimestamp": "2026-11-27T11:59:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-27T12:00:00Z"
    status = {"conditions": [{"type": "Complete", "status": "True"}]} if finished else {}
    return {"metadata": meta, "spec": {"activeDeadlineSeconds": 600}, "status": status}


@pytest.mark.parametrize("planned, jobs, reason_scope", [
    (64, [], None),
    (65, [], "this KernelWarmup"),
    (10, [prewarm_job("kw", "other")] * 55, "this KernelWarmup"),  # its other targets' Jobs count
    (10, [prewarm_job("kw", "t")] * 60, None),  # this target's old Jobs are superseded
    (10, [prewarm_job("kw", "other", deleting=True)] * 60, None),  # being deleted: gone
    (10, [prewarm_job("kw", "other", finished=True)] * 60, None),  # finished (waiting for its TTL): no GPU held
    (10, [prewarm_job("kw2", "x")] * 119, "this namespace"),
    (10, [prewarm_job("kw2", "x")] * 118, None),
])
def test_prewarm_jobs_are_bounded_per_kernelwarmup_and_namespace(planned, jobs, reason_scope):
    """Issue 25 item 3: one KernelWarmup over 150 GPU nodes made 150 Jobs per edit."""
    now = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.timezone.utc)
    problem = pw.bounds_problem(pw.JobBounds(64, 128), planned, "t", "kw", jobs, "Deployment/llm", now)
    if reason_scope is None:
        assert problem is None
    else:
        assert problem.reason == "PrewarmTooManyJobs" and reason_scope in problem.message
        assert problem.field == "spec.prewarm.nodes" and "prewarm.maxJobsPer" in problem.message
    assert pw.bounds_problem(pw.JobBounds(0, 0), 10_000, "t", "kw", jobs, "Deployment/llm", now) is None
