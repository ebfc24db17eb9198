"""Reconciliation glue: decisions (pure, decide.py) carried out through kube.py.

Independent of kopf so it can be driven by the handlers in handlers.py and by tests alike.
Every write is preceded by a fresh GET and a second decision, one run per workload at a
time (singleflight.py), so a stale watch snapshot can never apply an outdated fragment. The
KernelWarmups' status is the StatusReporter's (status_report.py), from the same decisions."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Optional

from kernel_warmer.faults import fault_point
from warmup_operator import metrics
from warmup_operator.bounded import BoundedDict
from warmup_operator.core import names
from warmup_operator.core.admission import missed_admission
from warmup_operator.core.uninject import injected_parts
from warmup_operator.core.decide import CRRecord, Decision, apply_body, cr_ref, decide
from warmup_operator.core.dicts import deep_merge, nest
from warmup_operator.core.kernelwarmup import KernelWarmupSpec
from warmup_operator.core.kinds import KINDS, WorkloadKind
from warmup_operator.core.targets import lists_are_keyed, templates
from warmup_operator.core.trust import TrustPolicy
from warmup_operator.core.prewarm import JobBounds, Verdict
from warmup_operator.prewarm import Prewarmer
from warmup_operator.singleflight import SingleFlight
from warmup_operator.status_report import Outcome, StatusReporter, concerns, owner_of
from warmup_operator.redact import env_literals, redact

log = logging.getLogger("warmup_operator")

# emit(object_ref, type, reason, message): posts a Kubernetes Event.
Emit = Callable[[dict, str, str, str], None]


def ref(obj: Any, kind: Optional[WorkloadKind] = None) -> dict:
    meta = obj.get("metadata") or {}
    return {"apiVersion": obj.get("apiVersion") or (kind.api_version if kind else ""),
            "kind": obj.get("kind") or (kind.kind if kind else ""),
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid")}}


class Controller:
    def __init__(self, kube: Any, *, bootstrap_image: str = names.DEFAULT_BOOTSTRAP_IMAGE,
                 emit: Optional[Emit] = None, policy: TrustPolicy = TrustPolicy(), admission: bool = False,
                 prewarm_bounds: JobBounds = JobBounds()):
        self.kube = kube
        self.bootstrap_image = bootstrap_image
        self.policy = policy
        self.emit = emit or (lambda *a: None)
        self._flight: SingleFlight[list[CRRecord], Outcome] = SingleFlight()  # one reconcile per workload
        # (kind, namespace, name) -> the last failed apply, until one succeeds (status, item 9)
        self.apply_errors: BoundedDict[tuple[str, str, str], str] = BoundedDict()
        # Every KernelWarmup of the cluster (see_cluster, from the handlers' index and the
        # webhook's); None: only the namespace's are known.
        self.cluster_crs: Optional[list[CRRecord]] = None
        # The admission webhook injects users' writes (issue 13): the controller then adopts
        # what it wrote before changing it, and reports the writes it had to inject itself.
        self.admission = admission
        self.late: BoundedDict[tuple[str, str, str], tuple[str, str]] = BoundedDict()  # (kind, ns, name) -> (hash, why)
        self.prewarm = Prewarmer(kube, self.emit, bootstrap_image, crs=lambda: self.cluster_crs or [],
                                 bounds=prewarm_bounds)
        # The KernelWarmups' status, from the same decisions (status_report.py).
        self.status = StatusReporter(kube, self.emit, self._decide, self.prewarm, self.apply_errors, self.late)

    def _namespace_labels(self, obj: Any, crs: list[CRRecord]) -> Optional[dict]:
        """The workload namespace's labels, read only when a KernelWarmup there asks for a
        hostPath cache (Pod Security Admission may refuse it)."""
        ns = (obj.get("metadata") or {}).get("namespace", "")
        if not any(isinstance(s := c.parsed(), KernelWarmupSpec) and "hostPath" in s.cache.source
                   for c in crs if c.namespace == ns):
            return None
        return self.kube.namespace_labels(ns)

    def _decide(self, kind: WorkloadKind, obj: Any, crs: list[CRRecord]) -> Decision:
        d = decide(kind, obj, crs, default_bootstrap_image=self.bootstrap_image, policy=self.policy,
                   namespace_labels=self._namespace_labels(obj, crs), cluster_crs=self.cluster_crs)
        if kind.crd and d.action == "inject":
            crd = self.kube.get_crd(kind.crd)
            if crd is None or not lists_are_keyed(crd):
                from warmup_operator.core.containers import InjectionError
                err = InjectionError("spec.targets.kinds", f"this {kind.kind} CRD does not key its pod-template "
                                     "lists by name, so server-side apply would replace the user's lists; not injecting")
                return Decision("none", d.kind, d.name, d.namespace, owner=d.owner, error=err)
        return d

    def see_cluster(self, crs: list[CRRecord]) -> None:
        """Every KernelWarmup of the cluster, as the caller's index has them now."""
        self.cluster_crs = list(crs)

    def decision(self, kind: WorkloadKind, obj: Any, crs: list[CRRecord]) -> Decision:
        """What the controller would do to ``obj`` (the webhook asks the same question)."""
        return self._decide(kind, obj, crs)

    def reconcile_workload(self, kind: WorkloadKind, obj: Any, crs: list[CRRecord], *, wait: bool = True) -> Outcome:
        """Bring one workload to the state the KernelWarmups ask for (idempotent). Without
        ``wait`` (an event's nudge), a reconcile of it already running takes these
        KernelWarmups and goes once more, and this returns at once (``queued``)."""
        d = self._decide(kind, obj, crs)
        if d.action == "none" and not d.record:
            return Outcome(d)
        out = self._flight.run((kind.kind, d.namespace, d.name),
                               lambda latest: self._reconcile_live(kind, d.namespace, d.name, latest), crs, wait=wait)
        return out if out is not None else Outcome(d, queued=True)

    def _reconcile_live(self, kind: WorkloadKind, namespace: str, name: str, crs: list[CRRecord]) -> Outcome:
        """The workload as the API has it now, decided and written (one run per workload)."""
        live = self.kube.get_workload(kind, namespace, name)
        if live is None:
            return Outcome(Decision("none", kind.kind, name, namespace))
        d = self._decide(kind, live, crs)
        if d.action != "inject" and self.prewarm.pending(kind.kind, d.namespace, d.name):
            self.prewarm.forget(kind, d.namespace, d.name)
        if d.action == "none":
            return self._record(kind, d)
        verdict = self._prewarm_verdict(kind, live, d, crs) if d.action == "inject" else None
        if verdict is not None and verdict.action != "apply":
            return Outcome(d)  # held: a prewarm Job runs first, or failed under failurePolicy Fail
        failed = self._apply(kind, live, d, crs)
        if failed is not None:
            return failed
        metrics.INJECTIONS.labels(kind.kind, d.action).inc()
        # A rollout the prewarm gate held back (the webhook too) is no missed admission.
        if self.admission and d.action == "inject" and (verdict is None or verdict.phase == "NotUsed"):
            self._report_missed_admission(kind, live, d, crs)
        self._announce_applied(kind, live, d, crs)
        return Outcome(d, applied=True)

    def _apply(self, kind: WorkloadKind, live: Any, d: Decision, crs: list[CRRecord]) -> Optional[Outcome]:
        """Write the decision (None: written); a failure is reported and returned."""
        try:
            if self.admission:
                self._adopt(kind, live, d)
            self.kube.apply(kind, d.namespace, d.name, d.body)
        except Exception as exc:  # noqa: BLE001 - reported, retried by the caller
            metrics.RECONCILE_ERRORS.labels("apply").inc()
            # The API's error body can echo the object; the warmer copies the serving
            # env, so a literal token there must never reach a log, an Event or status.
            msg = redact(f"{d.action} {kind.kind}/{d.name} failed: {getattr(exc, 'reason', '')} "
                         f"{getattr(exc, 'body', exc)}", env_literals(kind, live))
            log.warning(msg)
            self._apply_failed(kind, live, d, crs, msg)
            return Outcome(d, error=msg, status=getattr(exc, "status", None))
        fault_point("applied")
        self.apply_errors.pop((kind.kind, d.namespace, d.name), None)
        return None

    def _announce_applied(self, kind: WorkloadKind, live: Any, d: Decision, crs: list[CRRecord]) -> None:
        verb = "Injected" if d.action == "inject" else "Removed"
        text = (f"kernel warmup from KernelWarmup {d.owner} (hash {d.hash})" if d.action == "inject"
                else "kernel warmup injection removed")
        log.info("%s %s %s/%s %s", verb, kind.kind, d.namespace, d.name, d.hash or "")
        self.emit(ref(live, kind), "Normal", f"KernelWarmup{verb}", text)
        owner = next((c for c in crs if c.name == (d.owner or owner_of(live, kind))), None)
        if owner is not None:
            self.emit(cr_ref(owner), "Normal", verb, f"{kind.kind}/{d.name}: {text}")
        for w in d.warnings:
            self.emit(ref(live, kind), "Warning", "KernelWarmupWarning", w)

    def stuck_for(self) -> float:
        """Seconds the longest reconcile in progress has run (liveness: handlers.py)."""
        return self._flight.oldest_run_s()

    def _record(self, kind: WorkloadKind, d: Decision) -> Outcome:
        """Write what the injection was made from onto the workload (its metadata: no
        rollout), with the live injected parts as they are (owned, unchanged)."""
        if not d.record or d.body is None:
            return Outcome(d)
        try:
            self.kube.apply(kind, d.namespace, d.name, d.body)
        except Exception as exc:  # noqa: BLE001 - retried at the next resync; nothing changed
            log.warning("recording the injection's inputs on %s %s/%s failed: %s", kind.kind, d.namespace, d.name,
                        getattr(exc, "reason", type(exc).__name__))
            return Outcome(d)
        log.info("Kept %s %s/%s injected as it is (hash %s); recorded what it was made from",
                 kind.kind, d.namespace, d.name, d.hash)
        return Outcome(d)

    def _adopt(self, kind: WorkloadKind, live: Any, d: Decision) -> None:
        """Own what the webhook injected before changing it: fields a webhook adds belong to
        no field manager, so an apply without them would not remove them. The apply writes
        the live values back (no change, no rollout)."""
        parts = {}
        for path, t in templates(kind, live):
            frag = injected_parts(t)
            if frag:
                parts = deep_merge(parts, nest(path, frag))
        if parts:
            self.kube.apply(kind, d.namespace, d.name, apply_body(kind, d.name, d.namespace, parts))

    def _report_missed_admission(self, kind: WorkloadKind, live: Any, d: Decision, crs: list[CRRecord]) -> None:
        """A write the webhook should have injected, injected now by the controller: say so
        (an Event on the workload and the KernelWarmup, and the target's status)."""
        owner = next((c for c in crs if c.name == d.owner), None)
        why = missed_admission(owner, live) if owner is not None else None
        if not why:
            return
        self.late[(kind.kind, d.namespace, d.name)] = (d.hash or "", why)
        log.warning("%s %s/%s: %s", kind.kind, d.namespace, d.name, why)
        self.emit(ref(live, kind), "Warning", "InjectedAfterAdmission", why)
        self.emit(cr_ref(owner), "Warning", "InjectedAfterAdmission", f"{kind.kind}/{d.name}: {why}")

    def _prewarm_verdict(self, kind: WorkloadKind, live: Any, d: Decision, crs: list[CRRecord]) -> Optional[Verdict]:
        """Whether the new hash may be applied now (action apply): no prewarm applies, or its
        Jobs succeeded (or failed under failurePolicy Ignore); core/prewarm.py and prewarm.py."""
        owner = next((c for c in crs if c.name == d.owner and c.namespace == d.namespace), None)
        spec = owner.parsed() if owner is not None else None
        if not isinstance(spec, KernelWarmupSpec):
            return None
        return self.prewarm.gate(kind, live, d, owner, spec)

    def _apply_failed(self, kind: WorkloadKind, live: Any, d: Decision, crs: list[CRRecord], msg: str) -> None:
        """Remember a failed apply for the status and say it once in Events (a 422 or 403
        is not retried away: it stays until the workload or the CR changes)."""
        key = (kind.kind, d.namespace, d.name)
        if self.apply_errors.get(key) == msg:
            return
        self.apply_errors[key] = msg
        self.emit(ref(live, kind), "Warning", "KernelWarmupApplyFailed", msg)
        owner = next((c for c in crs if c.name == (d.owner or owner_of(live, kind))), None)
        if owner is not None:
            self.emit(cr_ref(owner), "Warning", "ApplyFailed", msg)

    def reconcile_namespace(self, namespace: str, workloads: Iterable[tuple[WorkloadKind, Any]],
                            crs: list[CRRecord], only_for: Optional[CRRecord] = None) -> list[Outcome]:
        """Reconcile the namespace's workloads; with ``only_for``, just those that CR
        selects or injected (no other workload's answer depends on it)."""
        out = []
        for kind, obj in workloads:
            if (obj.get("metadata") or {}).get("namespace") != namespace:
                continue
            if only_for is not None and not concerns(only_for, kind, obj):
                continue
            out.append(self.reconcile_workload(kind, obj, crs))
        return out

__all__ = ["Controller", "Outcome", "KINDS", "cr_ref", "ref"]
