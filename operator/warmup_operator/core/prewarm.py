"""Prewarm before the rollout (pure): the Job that fills a shared cache, its state, the verdict.

When the operator is about to put a new injection hash into a workload whose cache is
shared (a PVC, or a hostPath with ``spec.prewarm.nodes``), it first runs the warmer with
the new spec in a Job per cache (per node for hostPath), and applies the template only
when the Jobs succeeded: one rollout, onto a warm cache. This module builds those Jobs
from the injection ``core/inject.py`` computed, reads their state back, and turns states
and ``failurePolicy`` into a verdict; ``warmup_operator/prewarm.py`` does the I/O.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

from warmup_operator.core import names
from warmup_operator.core.inject import digest
from warmup_operator.core.kernelwarmup import KernelWarmupSpec, PrewarmSpec, Requirement
from warmup_operator.core.kinds import KINDS
from warmup_operator.core.status import parse_summary, structured_summary, warmer_termination
from warmup_operator.core.targets import requirement_matches

PREWARM_TIMEOUT_SLACK_S = 600  # scheduling and the image pull, on top of the warmer's own bound
JOB_TTL_SECONDS = 3600  # finished Jobs stay an hour (their summary), then the TTL controller deletes them
# A Job still unfinished this long after its deadline: the Job controller is not acting on it.
DEADLINE_GRACE_S = 120
# Pod-spec fields the Job takes from the workload's template: where it may run, as whom.
# Of the affinity only nodeAffinity: pod (anti-)affinity places the workload's Pods relative
# to each other, and would keep the Job off the very node it must fill.
SCHEDULING_FIELDS = ("nodeSelector", "tolerations", "priorityClassName", "runtimeClassName",
                     "imagePullSecrets", "securityContext", "serviceAccountName", "schedulerName")

Phase = Literal["Prewarming", "Succeeded", "Failed", "TimedOut", "NotUsed"]


@dataclass(frozen=True)
class Problem:
    """Why no Job can run (bad input): ``field`` names what to change; the policy decides."""

    field: str
    message: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# --- whether and how a target is prewarmed ------------------------------------------------


@dataclass(frozen=True)
class Plan:
    use: bool
    per_node: bool = False
    note: str = ""  # why not, when the status should say so


def plan_for(kind: str, spec: KernelWarmupSpec) -> Plan:
    """A PVC: one Job; a hostPath with ``prewarm.nodes``: one per node; otherwise none."""
    pw = spec.prewarm
    source = spec.cache.source
    if not pw.enabled or not ("persistentVolumeClaim" in source or ("hostPath" in source and pw.nodes)):
        return Plan(False)
    if KINDS[kind].multi_pod:
        return Plan(False, note=f"not used for a multi-Pod world ({kind}): its Pods warm in their "
                                "init containers, together")
    return Plan(True, per_node="hostPath" in source)


def timeout_of(spec: KernelWarmupSpec) -> int:
    return spec.prewarm.timeout_seconds or spec.warmer.timeout_seconds + PREWARM_TIMEOUT_SLACK_S


def selector_matches(pw: PrewarmSpec, labels: Mapping[str, str]) -> bool:
    labels = labels or {}
    return (all(labels.get(k) == v for k, v in pw.node_labels.items())
            and all(requirement_matches(r, labels) for r in pw.node_expressions))


def describe_selector(pw: PrewarmSpec) -> str:
    parts = [f"{k}={v}" for k, v in sorted(pw.node_labels.items())]
    parts += [_describe_requirement(r) for r in pw.node_expressions]
    return ",".join(parts)


def _describe_requirement(r: Requirement) -> str:
    return f"{r.key} {r.operator} ({','.join(r.values)})" if r.values else f"{r.key} {r.operator}"


def prewarm_nodes(pw: PrewarmSpec, target: str, pod_nodes: list[str], nodes: list[dict]) -> list[str] | Problem:
    """The nodes whose hostPath folder to fill: where the workload's Pods run now, or the
    nodes the selector matches. ``nodes``: Node objects (only read for Selector)."""
    if pw.nodes == "WorkloadPods":
        found = sorted(set(n for n in pod_nodes if n))
        return found or Problem("spec.prewarm.nodes.source", f"WorkloadPods: no Pod of {target} runs on a node now, "
                                "so there is no node to prewarm; use source Selector to name the nodes", "NoPrewarmNodes")
    found = sorted(n["metadata"]["name"] for n in nodes if selector_matches(pw, n["metadata"].get("labels") or {}))
    return found or Problem("spec.prewarm.nodes.selector", f"{describe_selector(pw)} matches none of the cluster's "
                            f"{len(nodes)} node(s); fix the selector or label the GPU nodes", "NoPrewarmNodes")


def check_pvc(claim: str, pvc: Optional[dict], target: str, pod_nodes: list[str], replicas: int) -> Optional[Problem]:
    """A PVC cache is shared only if every replica's node can mount it."""
    field_ = "spec.cache.persistentVolumeClaim.claimName"
    if pvc is None:
        return Problem(field_, f"PersistentVolumeClaim {claim} does not exist in this namespace; create it "
                       "(ReadWriteMany) or fix the name", "CacheClaimNotFound")
    modes = set((pvc.get("status") or {}).get("accessModes") or (pvc.get("spec") or {}).get("accessModes") or [])
    if modes & {"ReadWriteMany", "ReadOnlyMany"}:
        return None
    nodes = sorted(set(n for n in pod_nodes if n))
    if "ReadWriteOncePod" in modes and replicas > 1:
        return Problem(field_, f"PersistentVolumeClaim {claim} is ReadWriteOncePod but {target} has {replicas} "
                       "replicas: one Pod at a time can mount it; use a ReadWriteMany claim", "CacheNotShared")
    if len(nodes) > 1:
        return Problem(field_, f"PersistentVolumeClaim {claim} is ReadWriteOnce but {target} runs Pods on "
                       f"{len(nodes)} nodes ({', '.join(nodes[:5])}): only one node can mount it; use a "
                       "ReadWriteMany claim", "CacheNotShared")
    return None


# --- the Job ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    cr_name: str
    cr_uid: str
    kind: str
    workload: str
    namespace: str
    hash: str  # the injection hash this Job warms for
    template: dict  # the user's own pod template (uninject.user_view)
    fragment: dict  # the injection fragment of that template (inject.build_injection)
    timeout_s: int
    node: Optional[str] = None  # hostPath: the node whose folder this Job fills


def target_label(kind: str, workload: str) -> str:
    return digest([kind, workload])


def cr_label(cr_name: str) -> str:
    """The KernelWarmup's name as a label value (at most 63 characters: a longer name, up to
    the 253 an object name may have, is cut and made unique with its digest)."""
    if len(cr_name) <= 63:
        return cr_name
    return f"{cr_name[:50].rstrip('-.')}-{digest([cr_name])[:12]}"


@dataclass(frozen=True)
class JobBounds:
    """Install-time bounds on prewarm Jobs (chart values prewarm.maxJobsPerKernelWarmup and
    prewarm.maxJobsPerNamespace): one KernelWarmup over a large node pool cannot fill a
    namespace, or the cluster, with Jobs. 0: no bound."""

    per_kernelwarmup: int = 64
    per_namespace: int = 128


def bounds_problem(bounds: JobBounds, planned: int, target_label_: str, cr_name: str, jobs: list[dict],
                   target: str, now: datetime.datetime) -> Optional[Problem]:
    """Whether ``planned`` new Jobs for one target exceed the bounds, counting the
    namespace's running prewarm Jobs (``jobs``) of other targets (this target's are
    superseded; a finished Job waits for its TTL but holds no GPU)."""
    live = [j for j in jobs if not (j.get("metadata") or {}).get("deletionTimestamp")
            and ((j.get("metadata") or {}).get("labels") or {}).get(names.LABEL_PREWARM_TARGET) != target_label_
            and job_state(j, now).phase == "running"]
    mine = [j for j in live if (j["metadata"].get("labels") or {}).get(names.LABEL_PREWARM_CR) == cr_label(cr_name)]
    for count, bound, scope, value in ((len(mine) + planned, bounds.per_kernelwarmup, "this KernelWarmup",
                                        "prewarm.maxJobsPerKernelWarmup"),
                                       (len(live) + planned, bounds.per_namespace, "this namespace",
                                        "prewarm.maxJobsPerNamespace")):
        if bound and count > bound:
            return Problem("spec.prewarm.nodes", f"prewarm of {target} needs {planned} Job(s), {count} for {scope}, "
                           f"over the operator's bound of {bound}: narrow spec.prewarm.nodes.selector, or ask the "
                           f"installer to raise chart value {value}", "PrewarmTooManyJobs")
    return None


def job_name(req: JobRequest) -> str:
    """Deterministic (a restarted operator finds its Job), <= 63 characters (the Job
    controller puts it into a label), unique per KernelWarmup, target, hash and node."""
    stem = req.workload[:40].rstrip("-.").lower() or "w"
    return f"kwp-{stem}-{digest([req.cr_name, req.kind, req.workload, req.hash, req.node or ''])[:12]}"


def build_job(req: JobRequest) -> dict:
    """The Job that runs the injected warmer with the new spec in the serving image, on the
    serving container's GPUs, where the workload's Pods may run, with the cache volume."""
    labels = {names.LABEL_PREWARM_CR: cr_label(req.cr_name), names.LABEL_PREWARM_TARGET: target_label(req.kind, req.workload),
              names.LABEL_PREWARM_HASH: req.hash}
    annotations = {names.ANN_PREWARM_TARGET: f"{req.kind}/{req.workload}"}
    if req.node:
        annotations[names.ANN_PREWARM_NODE] = req.node
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(req), "namespace": req.namespace, "labels": labels,
                     "annotations": annotations, "ownerReferences": [owner_reference(req)]},
        "spec": {"backoffLimit": 0, "completions": 1, "parallelism": 1, "activeDeadlineSeconds": req.timeout_s,
                 "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
                 "template": {"metadata": {"labels": dict(labels), "annotations": dict(annotations)},
                              "spec": job_pod_spec(req)}},
    }


def owner_reference(req: JobRequest) -> dict:
    """The KernelWarmup owns its Jobs: deleting it deletes them (the garbage collector)."""
    return {"apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.KIND, "name": req.cr_name,
            "uid": req.cr_uid, "controller": True}


def job_pod_spec(req: JobRequest) -> dict:
    tspec = (req.template or {}).get("spec") or {}
    fspec = req.fragment["spec"]
    init = {c["name"]: c for c in fspec["initContainers"]}
    warmer = copy.deepcopy(init[names.WARMER_CONTAINER])
    pod: dict[str, Any] = {k: copy.deepcopy(tspec[k]) for k in SCHEDULING_FIELDS if tspec.get(k)}
    node_affinity = (tspec.get("affinity") or {}).get("nodeAffinity")
    if node_affinity:
        pod["affinity"] = {"nodeAffinity": copy.deepcopy(node_affinity)}
    if req.node:
        pod["affinity"] = pin_to_node(pod.get("affinity"), req.node)
    pod.update({
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the warmer never calls the API
        "initContainers": [copy.deepcopy(init[names.BOOTSTRAP_CONTAINER])],
        "containers": [warmer],
        "volumes": [*mounted_user_volumes(tspec, warmer), *copy.deepcopy(fspec["volumes"])],
    })
    return pod


def mounted_user_volumes(tspec: dict, container: dict) -> list[dict]:
    """The template's volumes the warmer mounts (the model, /dev/shm ...), in their order."""
    wanted = {m.get("name") for m in container.get("volumeMounts") or []} - set(names.VOLUMES)
    return [copy.deepcopy(v) for v in tspec.get("volumes") or [] if v.get("name") in wanted]


def pin_to_node(affinity: Optional[dict], node: str) -> dict:
    """The template's affinity with the node added to every required term (terms are
    ORed, so each must name the node), as the DaemonSet controller pins its Pods."""
    out = copy.deepcopy(affinity or {})
    pin = {"key": "metadata.name", "operator": "In", "values": [node]}
    required = out.setdefault("nodeAffinity", {}).setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    required["nodeSelectorTerms"] = [{**t, "matchFields": [*(t.get("matchFields") or []), pin]} for t in terms]
    return out


# --- reading Jobs and their Pods back ---------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    name: str
    phase: Literal["running", "succeeded", "failed", "timeout"]
    reason: str = ""
    seconds: Optional[float] = None
    node: Optional[str] = None
    uid: str = ""


def _time(value: Any) -> Optional[datetime.datetime]:
    try:
        return datetime.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def job_state(job: dict, now: datetime.datetime) -> JobState:
    """Running, succeeded, failed or timed out, from the Job controller's conditions (and a
    deadline the operator checks itself, should the controller not act)."""
    meta, st = job.get("metadata") or {}, job.get("status") or {}
    base = dict(name=meta.get("name", ""), node=(meta.get("annotations") or {}).get(names.ANN_PREWARM_NODE),
                uid=meta.get("uid", ""))
    started = _time(st.get("startTime") or meta.get("creationTimestamp"))
    conds = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
    done = conds.get("Complete") or conds.get("Failed") or conds.get("FailureTarget")
    ended = _time(st.get("completionTime") or (done or {}).get("lastTransitionTime"))
    seconds = (ended - started).total_seconds() if started and ended else None
    if "Complete" in conds or "SuccessCriteriaMet" in conds:
        return JobState(phase="succeeded", seconds=seconds, **base)
    if done is not None:
        reason = str(done.get("reason") or "Failed")
        return JobState(phase="timeout" if reason == "DeadlineExceeded" else "failed", reason=reason,
                        seconds=seconds, **base)
    deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
    created = _time(meta.get("creationTimestamp"))
    if deadline and created and (now - created).total_seconds() > int(deadline) + DEADLINE_GRACE_S:
        return JobState(phase="timeout", reason="DeadlineNotEnforced", **base)
    return JobState(phase="running", **base)


def pod_summary(pod: dict) -> Optional[dict]:
    """The warmer's summary from a Job Pod's termination message (None: none there yet)."""
    term = warmer_termination(pod, "containerStatuses")
    return parse_summary(term.get("message") or "") if term else None


def pod_unschedulable(pod: dict) -> Optional[str]:
    """The scheduler's words when it could not place the Pod (PodScheduled False)."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return str(c.get("message") or "no node fits")[:300]
    return None


UNSCHEDULABLE_FIELDS = ("the workload's nodeSelector, affinity and tolerations, the serving container's GPU "
                        "requests, and spec.prewarm.nodes")


# --- the verdict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobResult:
    state: JobState
    summary: Optional[dict] = None  # from the Job's Pod, once it finished
    unschedulable: Optional[str] = None  # the scheduler's words, while it cannot place the Pod


def pods_by_job(pods: list[dict]) -> dict[str, list[dict]]:
    """Pods by the uid of the Job that controls them (its controller ownerReference): a Pod
    that only carries a Job's labels is no Pod of that Job, and its summary is not read."""
    out: dict[str, list[dict]] = {}
    for p in pods:
        for o in (p.get("metadata") or {}).get("ownerReferences") or []:
            if o.get("kind") == "Job" and o.get("controller") and o.get("uid"):
                out.setdefault(str(o["uid"]), []).append(p)
    return out


def result_failed(r: JobResult) -> bool:
    """A Job that completed with a failed summary failed too (under failurePolicy Ignore the
    warmer exits 0 after logging the failure)."""
    return r.state.phase in ("failed", "timeout") or (r.state.phase == "succeeded" and (r.summary or {}).get("status") == "failed")


@dataclass(frozen=True)
class Verdict:
    action: Literal["hold", "apply", "block"]  # wait for the Jobs; patch the template; do not roll out
    phase: Phase
    reason: str = ""
    message: str = ""
    jobs: tuple[str, ...] = ()
    seconds: Optional[float] = None
    summary: Optional[dict] = None


def judge(results: list[JobResult], failure_policy: str) -> Verdict:
    """All succeeded: apply. One failed or timed out: the policy decides. Otherwise hold."""
    jobs = tuple(sorted(r.state.name for r in results))
    bad = next((r for r in results if result_failed(r)), None)
    if bad is not None:
        phase: Phase = "TimedOut" if bad.state.phase == "timeout" else "Failed"
        reason = bad.state.reason or structured_summary(bad.summary or {}).get("failureReason", "WarmupFailed")
        what = (f"prewarm Job {bad.state.name} " + ("timed out" if phase == "TimedOut" else "failed")
                + f" ({reason}); kubectl logs job/{bad.state.name}")
        return on_failure(failure_policy, phase, reason, what, jobs, _summary(bad))
    if results and all(r.state.phase == "succeeded" for r in results):
        secs = [r.state.seconds for r in results if r.state.seconds is not None]
        first = results[0]
        return Verdict("apply", "Succeeded", jobs=jobs, seconds=max(secs) if secs else None, summary=_summary(first))
    stuck = next((r for r in results if r.unschedulable), None)
    if stuck is not None:
        return Verdict("hold", "Prewarming", "Unschedulable", f"prewarm Job {stuck.state.name} cannot be scheduled: "
                       f"{stuck.unschedulable}; check {UNSCHEDULABLE_FIELDS}. failurePolicy decides at the timeout "
                       "(spec.prewarm.timeoutSeconds)", jobs)
    running = sorted(r.state.name for r in results if r.state.phase == "running")
    return Verdict("hold", "Prewarming", message=f"waiting for prewarm Job(s) {', '.join(running)} before the "
                   "rollout", jobs=jobs)


def _summary(r: JobResult) -> Optional[dict]:
    return structured_summary(r.summary) if r.summary is not None else None


def on_failure(failure_policy: str, phase: Phase, reason: str, what: str, jobs: tuple[str, ...] = (),
               summary: Optional[dict] = None) -> Verdict:
    """failurePolicy: Ignore rolls out anyway (the init container warms), Fail does not."""
    if failure_policy == "Ignore":
        return Verdict("apply", phase, reason, f"{what}; failurePolicy Ignore: rolled out anyway, the init "
                       "container warms", jobs, summary=summary)
    return Verdict("block", phase, reason, f"{what}; failurePolicy Fail: not rolled out (fix it, or change the "
                   "KernelWarmup to retry)", jobs, summary=summary)


def problem_verdict(failure_policy: str, problem: Problem) -> Verdict:
    return on_failure(failure_policy, "Failed", problem.reason, str(problem))


def status_entry(v: Verdict, hash_: str) -> dict:
    """The target's ``prewarm`` status field."""
    out: dict[str, Any] = {"phase": v.phase, "hash": hash_}
    if v.jobs:
        out["jobs"] = list(v.jobs)
    if v.reason:
        out["reason"] = v.reason[:64]
    if v.message:
        out["message"] = v.message[:1024]
    if v.seconds is not None:
        out["seconds"] = round(v.seconds, 3)
    if v.summary is not None:
        out["summary"] = v.summary
    return out


# --- the admission path (issue 13's webhook) --------------------------------------------------


def admission_hash(plan: Plan, desired: Optional[str], live: Optional[str], passed: Optional[str]) -> Optional[str]:
    """Which injection a user's own write may carry: the desired one where no prewarm applies,
    where it is already live, or where its prewarm passed the gate (``passed``); while a
    prewarm is pending, the previous, already warmed injection (``live``), or none."""
    if not plan.use or desired in (live, passed):
        return desired
    return live
