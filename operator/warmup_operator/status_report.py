"""What a KernelWarmup's status says (the status reporter; the Controller, reconcile.py, is
the only writer of workloads): each target's state from the same decision the reconciler
makes, the warmups that count (only a target's own Pods), the status patch and one Warning
Event per new problem; while it is deleted, the removals worth retrying."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from warmup_operator.bounded import BoundedDict
from warmup_operator.core.decide import CRRecord, Decision, cr_ref
from warmup_operator.core.kernelwarmup import KernelWarmupSpec
from warmup_operator.core.kinds import KINDS, WorkloadKind
from warmup_operator.core.status import (
    StatusInputs,
    TargetState,
    WarmupObservation,
    compute_status,
    removal_stuck,
    replica_failure,
    same_status,
    status_patch,
)
from warmup_operator.core.targets import selects, templates
from warmup_operator.core.trust import not_opted_in
from warmup_operator.core.uninject import live_hash, live_owner
from warmup_operator.prewarm import Prewarmer
from warmup_operator.redact import env_literals, redact

Emit = Callable[[dict, str, str, str], None]


@dataclass
class Outcome:
    decision: Decision
    applied: bool = False
    error: str = ""
    status: Optional[int] = None  # the API's HTTP status of a failed apply
    queued: bool = False  # a reconcile of the workload was running: it goes once more with these KernelWarmups


class StatusReporter:
    def __init__(self, kube: Any, emit: Emit, decide: Callable[[WorkloadKind, Any, list[CRRecord]], Decision],
                 prewarm: Prewarmer, apply_errors: BoundedDict, late: BoundedDict):
        self.kube = kube
        self.emit = emit
        self._decide = decide  # the reconciler's own decision (Controller.decision)
        self.prewarm = prewarm
        self.apply_errors = apply_errors  # read only: the reconciler writes them
        self.late = late  # read only: the reconciler writes them
        self._owners: BoundedDict[str, Optional[tuple[str, str, str]]] = BoundedDict()  # uid -> its controller (immutable)

    def target_states(self, cr: CRRecord, workloads: Iterable[tuple[WorkloadKind, Any]],
                      crs: list[CRRecord]) -> list[TargetState]:
        states = []
        for kind, obj in workloads:
            meta = obj.get("metadata") or {}
            if meta.get("namespace") == cr.namespace and concerns(cr, kind, obj):
                state = self._target_state(cr, kind, obj, crs)
                if state is not None:
                    states.append(state)
        return states

    def _target_state(self, cr: CRRecord, kind: WorkloadKind, obj: Any, crs: list[CRRecord]) -> Optional[TargetState]:
        """This workload as ``cr``'s status reports it (None: not its business)."""
        d = self._decide(kind, obj, crs)
        st = obj.get("status") or {}
        counts = dict(replicas=int(st.get("replicas") or 0), ready_replicas=int(st.get("readyReplicas") or 0))
        failed = self.apply_errors.get((kind.kind, cr.namespace, d.name))
        if d.owner == cr.name and failed and d.action != "none":
            return TargetState(kind.kind, d.name, False, d.hash or "", message=failed, reason="ApplyFailed", **counts)
        if d.owner == cr.name:
            msg = str(d.error) if d.error else "; ".join(d.warnings)
            reason = getattr(d.error, "reason", "InjectionFailed") if d.error else ""
            injected = d.action == "none" and d.error is None
            late_hash, late_why = self.late.get((kind.kind, cr.namespace, d.name), ("", ""))
            if injected and not msg and late_why and late_hash == d.hash:
                msg, reason = late_why, "InjectedAfterAdmission"
            if injected and not msg:  # an admission refusal's words could quote the template's env
                msg, reason = replica_failure(st)
                msg = redact(msg, env_literals(kind, obj))
            pw = self.prewarm.view(kind.kind, cr.namespace, d.name, d.hash) if d.error is None else None
            msg, reason = prewarm_message(pw, injected, msg, reason)
            return TargetState(kind.kind, d.name, injected, d.hash or "", message=msg, reason=reason, engine=d.engine,
                               prewarm=pw, **counts)
        if cr.name in d.conflicts:
            return TargetState(kind.kind, d.name, False, message=f"also selected by KernelWarmup {d.owner} (older); "
                               "this one is ignored", **counts)
        if owner_of(obj, kind) != cr.name:  # selected, but the workload opted into another one (or none)
            refused = not_opted_in(kind.kind, d.name, cr.name, obj.get("metadata") or {})
            return TargetState(kind.kind, d.name, False, message=str(refused), reason=refused.reason, **counts)
        return None

    def refresh_status(self, cr: CRRecord, workloads: Iterable[tuple[WorkloadKind, Any]], crs: list[CRRecord],
                       warmups: list[WarmupObservation], previous: Optional[dict], spec_error: str = "") -> dict:
        workloads = list(workloads)
        targets = [] if spec_error else self.target_states(cr, workloads, crs)
        warmups = self.accepted_warmups(warmups, [obj for _, obj in workloads
                                                  if (obj.get("metadata") or {}).get("namespace") == cr.namespace])
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        new = compute_status(StatusInputs(cr.generation, targets, warmups, spec_error), previous, now)
        if not same_status(previous, new):
            self.kube.patch_cr_status(cr.namespace, cr.name, status_patch(previous, new))
            self._announce(cr, previous, targets)
        return new

    def accepted_warmups(self, warmups: list[WarmupObservation], workloads: list[Any]) -> list[WarmupObservation]:
        """Only summaries from Pods that a workload of this namespace controls (through its
        ReplicaSet or StatefulSet, checked by uid on the API) and that carry a pod-template
        hash the workload has now: a Pod anyone labelled with our annotations, or one of an
        old rollout, says nothing about this KernelWarmup."""
        current: dict[str, set] = {}
        for obj in workloads:
            uid = (obj.get("metadata") or {}).get("uid")
            kind = KINDS.get(obj.get("kind") or "")
            if uid and kind is not None:
                current[uid] = {live_hash(t) for _, t in templates(kind, obj)} - {None}
        return [w for w in warmups if (root := self._controlling_workload(w, set(current))) and w.hash in current[root]]

    def _controlling_workload(self, w: WarmupObservation, uids: set) -> Optional[str]:
        ref, depth = w.owner, 0
        while ref is not None and depth < 4:
            if ref[2] in uids:
                return ref[2]
            if ref[2] not in self._owners:
                self._owners[ref[2]] = self.kube.controller_of(ref[0], w.namespace, ref[1], ref[2])
            ref, depth = self._owners[ref[2]], depth + 1
        return None

    def removal_errors(self, cr: CRRecord, outcomes: list[Outcome], previous: dict) -> list[str]:
        """While a KernelWarmup is deleted: the removals worth retrying (the finalizer
        stays), shown in its status; a 422 will never pass, so it is reported (Event on the
        KernelWarmup, the workload already has one) and not waited for."""
        for o in outcomes:
            if o.error and o.status == 422:
                self.emit(cr_ref(cr), "Warning", "RemovalGivenUp",
                          f"{o.error}; the API refuses the removal, so the finalizer is released: take the "
                          f"kernel-warmup entries out of {o.decision.kind}/{o.decision.name} by hand")
        errors = [o.error for o in outcomes if o.error and o.status != 422]
        if errors:
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.kube.patch_cr_status(cr.namespace, cr.name, removal_stuck(previous, "; ".join(errors), now))
        return errors

    def _announce(self, cr: CRRecord, previous: Optional[dict], targets: list[TargetState]) -> None:
        """A Warning Event on the KernelWarmup for each target problem not in the previous
        status (refused opt-in, image, hostPath, reserved names, FailedCreate ...)."""
        before = {(t.get("kind"), t.get("name"), t.get("message")) for t in (previous or {}).get("targets") or []}
        for t in targets:
            if (t.message and t.reason and t.reason != "ApplyFailed" and not t.reason.startswith("Prewarm")
                    and (t.kind, t.name, t.message) not in before):
                self.emit(cr_ref(cr), "Warning", t.reason, f"{t.kind}/{t.name}: {t.message}")


def prewarm_message(pw: Optional[dict], injected: bool, msg: str, reason: str) -> tuple[str, str]:
    """A target's message and reason with its prewarm: waiting (Prewarming), refused by
    failurePolicy Fail (PrewarmFailed / PrewarmTimedOut), or rolled out anyway (Ignore)."""
    if pw is None or msg or pw.get("phase") in ("Succeeded", "NotUsed"):
        return msg, reason
    if not injected and pw.get("phase") == "Prewarming":
        return pw.get("message", ""), "Prewarming"
    failed = "PrewarmTimedOut" if pw.get("phase") == "TimedOut" else "PrewarmFailed"
    return pw.get("message", ""), failed


def concerns(cr: CRRecord, kind: WorkloadKind, obj: Any) -> bool:
    """Whether ``cr`` selects this workload or has injected it (cheap pre-filter)."""
    if owner_of(obj, kind) == cr.name:
        return True
    spec = cr.parsed()
    if not isinstance(spec, KernelWarmupSpec):
        return False
    meta = obj.get("metadata") or {}
    return selects(spec.targets, kind.kind, meta.get("name", ""), meta.get("labels") or {})


def owner_of(obj: Any, kind: WorkloadKind) -> Optional[str]:
    """The KernelWarmup whose injection the workload carries now (None: none)."""
    for _, t in templates(kind, obj):
        if live_owner(t):
            return live_owner(t)
    return None
