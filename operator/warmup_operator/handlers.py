"""The kopf handlers, wired to the reconciler (the CLI is in config.py and __main__.py).

Handlers are thin: indexes keep in-memory snapshots of KernelWarmups, workloads and
warmer Pods; every handler turns them into a decision through ``Controller``. A periodic
resync per KernelWarmup repairs anything a missed event left behind and refreshes status."""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Optional

import kopf

from warmup_operator import config, metrics
from warmup_operator.core import names
from warmup_operator.core.decide import CRRecord
from warmup_operator.core.kernelwarmup import SpecInvalid
from warmup_operator.core.kinds import KINDS, WorkloadKind
from warmup_operator.core.status import WarmupObservation, observe_pod
from warmup_operator.core.trust import OPT_IN
from warmup_operator.reconcile import Controller, cr_ref

log = logging.getLogger("warmup_operator")

_controller: Optional[Controller] = None


def controller() -> Controller:
    global _controller
    if _controller is None:
        from warmup_operator.kube import Kube
        cfg = config.current()
        _controller = Controller(Kube(), bootstrap_image=cfg.bootstrap_image, emit=_emit, policy=cfg.policy,
                                 admission=cfg.webhook.enabled, prewarm_bounds=cfg.prewarm_bounds)
    return _controller


def _emit(obj: dict, type_: str, reason: str, message: str) -> None:
    try:
        kopf.event(obj, type=type_, reason=reason, message=message[:1024])
    except Exception:
        log.debug("event not posted", exc_info=True)


def _snapshot(body: Any) -> dict:
    """A detached copy of what decisions read (kopf bodies are live views)."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {**{k: copy.deepcopy(meta.get(k)) for k in ("name", "namespace", "uid", "labels")
                        if meta.get(k) is not None},
                     "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                                     if k == OPT_IN}},
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
        "status": {k: copy.deepcopy((body.get("status") or {}).get(k))
                   for k in ("replicas", "readyReplicas", "updatedReplicas", "conditions")},
    }


# --- startup -------------------------------------------------------------------------


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = names.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.execution.max_workers = config.current().workers
    controller()
    if config.current().webhook.enabled:  # the admission webhook (issue 13)
        from warmup_operator import webhook
        webhook.configure(settings, config.current().webhook, controller().kube)


# --- indexes -------------------------------------------------------------------------


@kopf.index(names.GROUP, names.VERSION, names.PLURAL)
def kw_index(body: Any, namespace: str, **_: Any) -> dict:
    return {namespace: CRRecord.from_body(body)}


@kopf.index("", "v1", "pods", annotations={names.ANN_INJECTED_BY: kopf.PRESENT})
def warmup_index(body: Any, **_: Any) -> Optional[dict]:
    obs = observe_pod(dict(body))
    return {(obs.namespace, obs.cr): obs} if obs else {}


def _see_cluster(kw_index: Any) -> None:
    """Hand the controller every KernelWarmup (one cache, one mount path, cluster-wide)."""
    controller().see_cluster([c for ns in list(kw_index) for c in kw_index.get(ns, [])])


def _crs(kw_index: Any, namespace: str, override: Optional[CRRecord] = None,
         exclude_uid: Optional[str] = None) -> list[CRRecord]:
    crs = [c for c in kw_index.get(namespace, []) if c.uid != exclude_uid]
    if override is not None:
        crs = [c for c in crs if c.uid != override.uid] + [override]
    return crs


def index_id(kind: WorkloadKind) -> str:
    """The kwarg name kopf passes this kind's index under (``deployments_index`` ...)."""
    return f"{kind.plural}_index"


def _workloads(namespace: str, indexes: dict) -> list[tuple[WorkloadKind, dict]]:
    out = []
    for kind in KINDS.values():
        idx = indexes.get(index_id(kind))
        if idx is not None:
            out.extend((kind, obj) for obj in idx.get(namespace, []))
    return out


# --- KernelWarmup handlers -------------------------------------------------------------


def _reconcile_cr(body: Any, namespace: str, kw_index: Any, indexes: dict, warmup_index: Any) -> None:
    record = CRRecord.from_body(body)
    ctl = controller()
    parsed = record.parsed()
    workloads = _workloads(namespace, indexes)
    previous = dict(body.get("status") or {})
    warmups = list(warmup_index.get((namespace, record.name), []))
    if isinstance(parsed, SpecInvalid):
        metrics.RECONCILE_ERRORS.labels("invalid_spec").inc()
        ctl.status.refresh_status(record, workloads, [], warmups, previous, spec_error=str(parsed))
        if previous.get("conditions", [{}])[0].get("reason") != "InvalidSpec":
            _emit(cr_ref(record), "Warning", "InvalidSpec", str(parsed))
        raise kopf.PermanentError(str(parsed))
    _see_cluster(kw_index)
    crs = _crs(kw_index, namespace, override=record)
    outcomes = ctl.reconcile_namespace(namespace, workloads, crs, only_for=record)
    errors = [o.error for o in outcomes if o.error]
    for o in outcomes:
        if o.decision.owner == record.name and o.decision.error and not o.applied:
            metrics.RECONCILE_ERRORS.labels("injection").inc()
    ctl.status.refresh_status(record, workloads, crs, warmups, previous)
    if errors:
        raise kopf.TemporaryError("; ".join(errors)[:2000], delay=5)


# kopf retries a handler that raised after `backoff` seconds (default 60): after an API
# server restart the first calls get 503s, and a CR change must not wait a minute for that.
HANDLER_BACKOFF_S = 5


@kopf.on.resume(names.GROUP, names.VERSION, names.PLURAL, backoff=HANDLER_BACKOFF_S)
@kopf.on.create(names.GROUP, names.VERSION, names.PLURAL, backoff=HANDLER_BACKOFF_S)
@kopf.on.update(names.GROUP, names.VERSION, names.PLURAL, field="spec", backoff=HANDLER_BACKOFF_S)
def kw_changed(body: Any, namespace: str, kw_index: Any, warmup_index: Any, **indexes: Any) -> None:
    _reconcile_cr(body, namespace, kw_index, indexes, warmup_index)


def register_resync(seconds: float) -> None:
    """The KernelWarmups' resync timer at the configured interval: registered by __main__
    once the configuration is read (nothing here reads it at import time), once."""
    registry = kopf.get_default_registry()
    if any(h.id == "kw_resync" for h in registry._spawning.get_all_handlers()):
        return
    kopf.timer(names.GROUP, names.VERSION, names.PLURAL, id="kw_resync", interval=seconds, initial_delay=seconds,
               idle=None, backoff=HANDLER_BACKOFF_S)(kw_resync)


def kw_resync(body: Any, namespace: str, kw_index: Any, warmup_index: Any, **indexes: Any) -> None:
    try:
        _reconcile_cr(body, namespace, kw_index, indexes, warmup_index)
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        log.info("resync of %s/%s: %s", namespace, body["metadata"]["name"], exc)


@kopf.on.delete(names.GROUP, names.VERSION, names.PLURAL, backoff=HANDLER_BACKOFF_S)
def kw_deleted(body: Any, namespace: str, kw_index: Any, **indexes: Any) -> None:
    """Take the injection back out of every workload this KernelWarmup injected."""
    record = CRRecord.from_body(body)
    crs = _crs(kw_index, namespace, exclude_uid=record.uid)
    outcomes = controller().reconcile_namespace(namespace, _workloads(namespace, indexes), crs, only_for=record)
    controller().prewarm.delete_for_cr(namespace, record.name)  # no prewarm Job outlives its KernelWarmup
    errors = controller().status.removal_errors(record, outcomes, dict(body.get("status") or {}))
    if errors:
        raise kopf.TemporaryError("; ".join(errors)[:2000], delay=5)


@kopf.on.probe(id="controller")
def controller_progress(**_: Any) -> dict:
    """Liveness: /healthz fails while one reconcile has run longer than the bound (a stuck
    API call or lock), so the kubelet restarts the operator instead of it idling healthy."""
    running = controller().stuck_for()
    bound = config.current().stuck_seconds
    if bound and running > bound:
        raise kopf.PermanentError(f"a reconcile has run for {running:.0f}s (bound {bound:.0f}s)")
    return {"longestReconcileSeconds": round(running, 1)}


# --- workload and Pod watches ------------------------------------------------------------


def _on_workload(kind: WorkloadKind, body: Any, type: Optional[str], namespace: str, kw_index: Any) -> None:
    if type == "DELETED":
        return
    try:
        _see_cluster(kw_index)
        # An event is a nudge: it never parks a handler thread behind a reconcile of the same
        # workload already running (that one goes once more; reconcile.py, singleflight.py).
        out = controller().reconcile_workload(kind, _snapshot(body), _crs(kw_index, namespace), wait=False)
        if out.error:
            log.warning(out.error)
    except Exception:
        metrics.RECONCILE_ERRORS.labels("workload").inc()
        log.exception("reconciling %s %s/%s", kind.kind, namespace, body.get("metadata", {}).get("name"))


def _kind_index(body: Any, namespace: str, **_: Any) -> dict:
    return {namespace: _snapshot(body)}


def _kind_event(kind: WorkloadKind) -> Callable[..., None]:
    def on_event(body: Any, type: Optional[str], namespace: str, kw_index: Any, **_: Any) -> None:
        _on_workload(kind, body, type, namespace, kw_index)
    return on_event


def register_kinds() -> None:
    """One index and one event handler per workload kind, from core/kinds.py's list."""
    for kind in KINDS.values():
        kopf.index(kind.group, kind.version, kind.plural, id=index_id(kind))(_kind_index)
        kopf.on.event(kind.group, kind.version, kind.plural, id=f"{kind.plural}_event")(_kind_event(kind))


register_kinds()


@kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_PREWARM_CR: kopf.PRESENT})
def prewarm_job_event(body: Any, type: Optional[str], namespace: str, kw_index: Any, **indexes: Any) -> None:
    """A prewarm Job changed (finished, say): reconcile its target now, not at the next resync."""
    target = ((body.get("metadata") or {}).get("annotations") or {}).get(names.ANN_PREWARM_TARGET, "")
    kind_name, _, name = target.partition("/")
    kind = KINDS.get(kind_name)
    obj = next((o for k, o in _workloads(namespace, indexes) if k is kind and o["metadata"].get("name") == name), None)
    if kind is not None and obj is not None and type != "DELETED":
        _on_workload(kind, obj, None, namespace, kw_index)


@kopf.on.event("", "v1", "pods", annotations={names.ANN_INJECTED_BY: kopf.PRESENT})
def pod_event(body: Any, namespace: str, kw_index: Any, **indexes: Any) -> None:
    """Count each finished warmup once and tell the KernelWarmup about it (only a Pod a
    target workload controls, with its current hash: others are no warmup of ours)."""
    obs = observe_pod(dict(body))
    if obs is None or not controller().status.accepted_warmups([obs], [o for _, o in _workloads(namespace, indexes)]):
        return
    cr = next((c for c in kw_index.get(namespace, []) if c.name == obs.cr), None)
    if not metrics.observe_warmup(obs, cr):
        return
    if cr is None:
        return
    if obs.succeeded:
        _emit(cr_ref(cr), "Normal", "WarmupSucceeded", f"pod {obs.pod}: {_describe(obs)}")
    else:
        _emit(cr_ref(cr), "Warning", "WarmupFailed", f"pod {obs.pod}: {_describe(obs)}")


def _describe(obs: WarmupObservation) -> str:
    from warmup_operator.core.status import display
    return display(obs)
