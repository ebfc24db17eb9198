"""Prewarm before the rollout: the gate between a decision to inject a new hash and the apply.

``Prewarmer.gate`` is asked by ``reconcile.Controller`` right before it would apply an
injection with a new hash. Where ``core/prewarm.plan_for`` says the cache is shared, it
finds this target's Jobs (by label; a restarted operator adopts them), deletes those for
another hash (superseded), creates the missing ones, reads their state and Pods, and
answers with a ``Verdict``: hold (Jobs running), apply (succeeded, or failed under
failurePolicy Ignore) or block (failed under Fail). It also remembers each target's
prewarm status entry, posts Events and counts the metric once per finished Job.
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any, Callable, Optional

from warmup_operator import metrics
from warmup_operator.bounded import BoundedDict
from warmup_operator.core import names
from warmup_operator.core import prewarm as core
from warmup_operator.core.decide import CRRecord, Decision, cr_ref
from warmup_operator.core.inject import build_injection
from warmup_operator.core.kernelwarmup import KernelWarmupSpec
from warmup_operator.core.kinds import WorkloadKind
from warmup_operator.core.targets import templates
from warmup_operator.core.uninject import live_hash, user_view
from warmup_operator.redact import env_literals, redact

log = logging.getLogger("warmup_operator")
APPLY = core.Verdict("apply", "NotUsed")
Key = tuple[str, str, str]  # (kind, namespace, workload)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Prewarmer:
    def __init__(self, kube: Any, emit: Callable[[dict, str, str, str], None], bootstrap_image: str,
                 crs: Callable[[], list[CRRecord]] = list, bounds: core.JobBounds = core.JobBounds()):
        self.kube = kube
        self.bounds = bounds
        self.crs = crs  # every KernelWarmup the operator knows (for hold_reason)
        self.emit = emit
        self.bootstrap_image = bootstrap_image
        self._views: BoundedDict[Key, dict] = BoundedDict()  # the target's status entry (core.status_entry)
        self._announced: set[str] = set()  # Job uids whose end was counted and announced
        self._summaries: dict[str, Optional[dict]] = {}  # Job uid -> its Pod's summary (finished Jobs)
        self._problems: BoundedDict[Key, str] = BoundedDict()  # the last problem announced per target
        self._passed: BoundedDict[Key, str] = BoundedDict()  # the hash whose prewarm passed the gate (may be applied)
        self._job_uids: dict[Key, set[str]] = {}  # per target: the uids kept in _announced/_summaries
        self._lock = threading.Lock()

    # --- what reconcile and the status read ---------------------------------------------

    def view(self, kind: str, namespace: str, name: str, hash_: Optional[str]) -> Optional[dict]:
        """The target's prewarm status entry, if it is about ``hash_``."""
        with self._lock:
            v = self._views.get((kind, namespace, name))
        return v if v is not None and hash_ and v.get("hash") == hash_ else None

    def pending(self, kind: str, namespace: str, name: str) -> bool:
        with self._lock:
            v = self._views.get((kind, namespace, name))
        return v is not None and v.get("phase") == "Prewarming"

    def admission_hash(self, kind: str, spec: KernelWarmupSpec, namespace: str, name: str, desired: Optional[str],
                       live: Optional[str]) -> Optional[str]:
        """For the admission webhook (issue 13): the injection hash a user's write of this
        workload may carry now (core/prewarm.admission_hash); never one still being prewarmed."""
        with self._lock:
            passed = self._passed.get((kind, namespace, name))
        return core.admission_hash(core.plan_for(kind, spec), desired, live, passed)

    def hold_reason(self, d: Decision) -> Optional[str]:
        """A Gate for the admission webhook (issue 13, core/admission.Gate): why a user's write
        must not carry the injection ``d`` yet (its prewarm has not passed), else None."""
        if d.action != "inject":
            return None
        cr = next((c for c in self.crs() if (c.namespace, c.name) == (d.namespace, d.owner)), None)
        spec = cr.parsed() if cr is not None else None
        if not isinstance(spec, KernelWarmupSpec):
            return None
        passed = self.admission_hash(d.kind, spec, d.namespace, d.name, d.hash, None)
        return None if passed == d.hash else f"prewarm of hash {d.hash} pending; the controller applies it after the Job"

    def _remember(self, key: Key, verdict: core.Verdict, hash_: Optional[str]) -> None:
        with self._lock:
            if verdict.action == "apply" and hash_:
                self._passed[key] = hash_
            if verdict.phase == "NotUsed" and not verdict.message:
                self._views.pop(key, None)
            else:
                self._views[key] = core.status_entry(verdict, hash_ or "")

    # --- the gate -----------------------------------------------------------------------------

    def gate(self, kind: WorkloadKind, live: dict, d: Decision, cr: CRRecord, spec: KernelWarmupSpec) -> core.Verdict:
        """May ``d`` (an inject decision for ``live``) be applied now?"""
        key = (kind.kind, d.namespace, d.name)
        plan = core.plan_for(kind.kind, spec)
        if not plan.use:
            verdict = core.Verdict("apply", "NotUsed", message=plan.note)
            self._remember(key, verdict, d.hash)
            return verdict
        if all(live_hash(t) == d.hash for _, t in templates(kind, live)):
            return APPLY  # the same hash, some injected entries removed by hand: re-apply, no Job
        jobs = self.kube.list_jobs(d.namespace, self._target_selector(kind, d.name))
        self._keep_only(key, {core.job_state(j, _now()).uid for j in jobs})
        self._supersede(cr, kind, d, [j for j in jobs if _hash_of(j) != d.hash])
        current = [j for j in jobs if _hash_of(j) == d.hash]
        if not current:
            started = self._start(cr, spec, kind, live, d, plan)
            if isinstance(started, core.Problem):
                verdict = core.problem_verdict(spec.warmer.failure_policy, started)
                self._announce_problem(cr, key, started)
                self._remember(key, verdict, d.hash)
                return verdict
            current = started
        pods = self._job_pods(kind, d, current)
        results = [self._result(key, j, pods) for j in current]
        verdict = core.judge(results, spec.warmer.failure_policy)
        self._announce(cr, kind, d, results, verdict)
        self._remember(key, verdict, d.hash)
        return verdict

    @staticmethod
    def _target_selector(kind: WorkloadKind, name: str) -> str:
        return f"{names.LABEL_PREWARM_TARGET}={core.target_label(kind.kind, name)}"

    def _start(self, cr: CRRecord, spec: KernelWarmupSpec, kind: WorkloadKind, live: dict, d: Decision,
               plan: core.Plan) -> list[dict] | core.Problem:
        """Create this hash's Jobs: one for a PVC, one per node for hostPath."""
        target = f"{kind.kind}/{d.name}"
        template = user_view(templates(kind, live)[0][1])
        pods = self._workload_pods(live)
        pod_nodes = [(p.get("spec") or {}).get("nodeName") or "" for p in pods]
        if plan.per_node:
            nodes = core.prewarm_nodes(spec.prewarm, target, pod_nodes,
                                       self.kube.list_nodes() if spec.prewarm.nodes == "Selector" else [])
            if isinstance(nodes, core.Problem):
                return nodes
        else:
            claim = str(spec.cache.source["persistentVolumeClaim"].get("claimName", ""))
            replicas = int((live.get("spec") or {}).get("replicas") or 1)
            problem = core.check_pvc(claim, self.kube.get_pvc(d.namespace, claim), target, pod_nodes, replicas)
            if problem is not None:
                return problem
            nodes = [None]
        over = self._over_bounds(cr, kind, d, len(nodes))
        if over is not None:
            return over
        injection = build_injection(spec, template, cr_name=cr.name, default_bootstrap_image=self.bootstrap_image)
        created = []
        for node in nodes:
            req = core.JobRequest(cr.name, cr.uid, kind.kind, d.name, d.namespace, d.hash or injection.hash, template,
                                  injection.fragment, core.timeout_of(spec), node)
            job = core.build_job(req)
            try:
                self.kube.create_job(d.namespace, job)
            except Exception as exc:  # noqa: BLE001 - a refused Job is bad input: the policy decides
                why = redact(f"HTTP {getattr(exc, 'status', '')} {getattr(exc, 'reason', '')} "
                             f"{getattr(exc, 'body', exc)}", env_literals(kind, live))
                return core.Problem("spec.prewarm", f"the prewarm Job for {target} could not be created: "
                                    f"{why[:600]}", "PrewarmJobRefused")
            log.info("prewarm Job %s/%s started for %s (hash %s)", d.namespace, job["metadata"]["name"], target, d.hash)
            self.emit(cr_ref(cr), "Normal", "PrewarmStarted", f"{target}: Job {job['metadata']['name']}"
                      + (f" on node {node}" if node else "") + " fills the cache before the rollout")
            created.append(job)
        return created

    def _over_bounds(self, cr: CRRecord, kind: WorkloadKind, d: Decision, planned: int) -> Optional[core.Problem]:
        if not (self.bounds.per_kernelwarmup or self.bounds.per_namespace):
            return None
        jobs = self.kube.list_jobs(d.namespace, names.LABEL_PREWARM_CR)
        return core.bounds_problem(self.bounds, planned, core.target_label(kind.kind, d.name), cr.name, jobs,
                                   f"{kind.kind}/{d.name}", _now())

    def _workload_pods(self, live: dict) -> list[dict]:
        match = ((live.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not match:
            return []
        selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
        ns = (live.get("metadata") or {}).get("namespace", "")
        return [p for p in self.kube.list_pods(ns, selector)
                if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]

    def _job_pods(self, kind: WorkloadKind, d: Decision, jobs: list[dict]) -> dict[str, list[dict]]:
        """The Pods of this target's Jobs, by the uid of the Job that controls each: one list
        for all of them (not one per Job), and only when a Job is running or unread."""
        with self._lock:
            unread = [j for j in jobs if core.job_state(j, _now()).uid not in self._summaries]
        if not unread:
            return {}
        return core.pods_by_job(self.kube.list_pods(d.namespace, self._target_selector(kind, d.name)))

    def _result(self, key: Key, job: dict, pods: dict[str, list[dict]]) -> core.JobResult:
        state = core.job_state(job, _now())
        mine = pods.get(state.uid, [])
        if state.phase == "running":
            stuck = next((m for p in mine if (m := core.pod_unschedulable(p))), None)
            return core.JobResult(state, unschedulable=stuck)
        with self._lock:
            if state.uid not in self._summaries:
                self._summaries[state.uid] = next((s for p in mine if (s := core.pod_summary(p)) is not None), None)
                self._job_uids.setdefault(key, set()).add(state.uid)
            return core.JobResult(state, self._summaries[state.uid])

    def _keep_only(self, key: Key, listed: set[str]) -> None:
        """Drop what is remembered about this target's finished Jobs that no longer exist
        (superseded, deleted, past their TTL): a Job that is gone is never counted again,
        and the operator's memory does not grow with every rollout."""
        with self._lock:
            mine = self._job_uids.get(key, set())
            for uid in mine - listed:
                self._announced.discard(uid)
                self._summaries.pop(uid, None)
            if mine & listed:
                self._job_uids[key] = mine & listed
            else:
                self._job_uids.pop(key, None)

    # --- superseding and cleaning up ------------------------------------------------------

    def _supersede(self, cr: CRRecord, kind: WorkloadKind, d: Decision, old: list[dict]) -> None:
        for job in old:
            state = core.job_state(job, _now())
            self.kube.delete_job(d.namespace, state.name)
            if state.phase == "running":
                self._count((kind.kind, d.namespace, d.name), state.uid, "superseded", None)
                self.emit(cr_ref(cr), "Normal", "PrewarmSuperseded", f"{kind.kind}/{d.name}: Job {state.name} "
                          f"(hash {_hash_of(job)}) deleted: the KernelWarmup changed, hash {d.hash} is prewarmed instead")

    def forget(self, kind: WorkloadKind, namespace: str, name: str) -> None:
        """The target no longer waits for a prewarm (deselected, removed): delete its Jobs."""
        if self.pending(kind.kind, namespace, name):
            for job in self.kube.list_jobs(namespace, self._target_selector(kind, name)):
                self.kube.delete_job(namespace, job["metadata"]["name"])
        with self._lock:
            self._views.pop((kind.kind, namespace, name), None)

    def delete_for_cr(self, namespace: str, cr_name: str) -> int:
        """The KernelWarmup is being deleted: none of its Jobs stays behind."""
        jobs = self.kube.list_jobs(namespace, f"{names.LABEL_PREWARM_CR}={core.cr_label(cr_name)}")
        for job in jobs:
            self.kube.delete_job(namespace, job["metadata"]["name"])
        return len(jobs)

    # --- Events and metrics, once per finished Job -------------------------------------------

    def _count(self, key: Key, uid: str, outcome: str, seconds: Optional[float]) -> bool:
        with self._lock:
            if uid in self._announced:
                return False
            self._announced.add(uid)
            self._job_uids.setdefault(key, set()).add(uid)
        metrics.PREWARMS.labels(outcome).inc()
        if seconds is not None:
            metrics.PREWARM_SECONDS.labels(outcome).observe(seconds)
        return True

    def _announce(self, cr: CRRecord, kind: WorkloadKind, d: Decision, results: list[core.JobResult],
                  verdict: core.Verdict) -> None:
        target = f"{kind.kind}/{d.name}"
        for r in results:
            if r.state.phase == "running":
                if r.unschedulable and self._problems.get((kind.kind, d.namespace, d.name)) != r.unschedulable:
                    self._problems[(kind.kind, d.namespace, d.name)] = r.unschedulable
                    self.emit(cr_ref(cr), "Warning", "PrewarmUnschedulable", f"{target}: {verdict.message}")
                continue
            outcome = "failed" if core.result_failed(r) and r.state.phase == "succeeded" else r.state.phase
            if not self._count((kind.kind, d.namespace, d.name), r.state.uid, outcome, r.state.seconds):
                continue
            secs = f" in {r.state.seconds:.1f}s" if r.state.seconds is not None else ""
            if outcome == "succeeded":
                self.emit(cr_ref(cr), "Normal", "PrewarmSucceeded", f"{target}: Job {r.state.name} succeeded{secs}; "
                          "rolling out onto the warm cache")
            else:
                self.emit(cr_ref(cr), "Warning", "PrewarmTimedOut" if outcome == "timeout" else "PrewarmFailed",
                          f"{target}: {verdict.message}")

    def _announce_problem(self, cr: CRRecord, key: Key, problem: core.Problem) -> None:
        if self._problems.get(key) == str(problem):
            return
        self._problems[key] = str(problem)
        log.warning("prewarm of %s %s/%s: %s", key[0], key[1], key[2], problem)
        self.emit(cr_ref(cr), "Warning", problem.reason, f"{key[0]}/{key[2]}: {problem}")


def _hash_of(job: dict) -> str:
    return ((job.get("metadata") or {}).get("labels") or {}).get(names.LABEL_PREWARM_HASH, "")
