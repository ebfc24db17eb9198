"""The mutating admission webhook (issue 13): the injection lands in the user's own write.

kopf serves it (``@kopf.on.mutate`` for every kind of ``core/kinds.py``, CREATE and UPDATE,
path ``/inject``); the MutatingWebhookConfiguration belongs to the installer (the chart),
with ``failurePolicy: Ignore`` and a short timeout, so a write never waits for or fails on
the operator. The answer is ``core/admission.admit`` on the controller's own decision, so
webhook and controller give the same templates; a write that gets through uninjected is
injected by the controller afterwards and reported (reconcile.py).

Writes by the operator itself are left as they are: the controller's applies are already
what ``decide`` wants, and a replica whose KernelWarmup index lags must not undo them.

Certificates: made at start-up (certs.py) with this replica's CA put into the
configuration's caBundle (and checked again every ``CA_CHECK_S``), or read from
``--webhook-cert-dir`` (cert-manager's Secret) where the chart says so."""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Callable, Optional

import kopf

from warmup_operator import certs, metrics
from warmup_operator.config import WebhookConfig
from warmup_operator.core import names
from warmup_operator.core.admission import Admission, admit
from warmup_operator.core.decide import CRRecord
from warmup_operator.core.dicts import get_path
from warmup_operator.core.kinds import KINDS, WorkloadKind

log = logging.getLogger("warmup_operator")

WEBHOOK_ID = "inject"  # the URL path the configuration calls: https://<service>/inject
CA_CHECK_S = 60.0

_self_user: Optional[str] = None  # the operator's user name (its own writes are left alone)


def register(controller: Callable[[], Any]) -> None:
    """One mutating handler per workload kind (call before kopf starts)."""
    for kind in KINDS.values():
        kopf.on.mutate(kind.group, kind.version, kind.plural, id=WEBHOOK_ID, operations=["CREATE", "UPDATE"],
                       side_effects=False, ignore_failures=True)(functools.partial(_mutate, kind, controller))


def _mutate(kind: WorkloadKind, controller: Callable[[], Any], body: Any, patch: kopf.Patch, userinfo: Any,
            warnings: list, kw_index: Any, namespace: Optional[str] = None, **_: Any) -> None:
    started = time.perf_counter()
    if _self_user and (userinfo or {}).get("username") == _self_user:
        return
    obj = dict(body)
    ns = namespace or (obj.get("metadata") or {}).get("namespace") or ""
    try:
        ctl = controller()
        everyone = [c for n in list(kw_index) for c in kw_index.get(n, [])]
        crs = [c for c in everyone if c.namespace == ns]
        adm = _admission(kind, ctl, obj, crs, everyone)
    except Exception:  # never refuse or break a user's write; the controller repairs
        log.exception("admission of %s %s/%s", kind.kind, ns, (obj.get("metadata") or {}).get("name"))
        metrics.ADMISSIONS.labels(kind.kind, "error").inc()
        metrics.ADMISSION_FAILURES.labels("error").inc()
        return
    for path, template in adm.templates.items():
        patch.fns.append(functools.partial(_set, path, template))
    if adm.inputs:
        patch.fns.append(functools.partial(_record_inputs, adm.inputs))
    if adm.note and (adm.decision.error or not adm.templates):
        warnings.append(f"kernel-warmup: {adm.note}")
    action = adm.decision.action if adm.templates else "none"
    log.info("admission of %s %s/%s: %s", kind.kind, ns, adm.decision.name, adm.note or "nothing to change")
    metrics.ADMISSIONS.labels(kind.kind, action).inc()
    metrics.ADMISSION_SECONDS.labels(kind.kind).observe(time.perf_counter() - started)


def _admission(kind: WorkloadKind, ctl: Any, obj: dict, crs: list[CRRecord], everyone: list[CRRecord]) -> Admission:
    ctl.see_cluster(everyone)
    # Issue 17: no write carries a hash still being prewarmed (core/admission.Gate).
    return admit(kind, obj, ctl.decision(kind, obj, crs), gate=ctl.prewarm.hold_reason)


def _record_inputs(inputs: str, body: dict) -> None:
    """What the injection was made from, on the workload's metadata (core/decide.py)."""
    meta = body.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), names.LABEL_INPUTS: inputs}


def _set(path: tuple[str, ...], value: dict, body: dict) -> None:
    parent = get_path(body, path[:-1])
    if isinstance(parent, dict):
        parent[path[-1]] = value


# --- start-up: the server, its certificate, the caBundle --------------------------------------


_started: Optional[tuple[str, str, Optional[bytes]]] = None  # (certfile, keyfile, our CA) of this process
_start_lock = threading.Lock()


def configure(settings: kopf.OperatorSettings, cfg: WebhookConfig, kube: Any) -> None:
    """kopf's webhook server with our certificate; the CA into the configuration. Once per
    process: under --leader-elect a replica runs kopf twice (replica.py) and this startup
    step in both; the second gets the same certificate and no second caBundle keeper (its
    server is then switched off: only the serving operator listens)."""
    global _self_user, _started
    with _start_lock:
        first = _started is None
        if first:
            _self_user = kube.whoami()
            _started = _certificate(cfg)
        certfile, keyfile, ca = _started
    settings.admission.server = kopf.WebhookServer(addr=cfg.bind, port=cfg.port, certfile=certfile, pkeyfile=keyfile)
    settings.admission.managed = None  # the configuration is the installer's (chart)
    if not first:
        return
    if ca is not None and cfg.configuration:
        threading.Thread(target=_keep_ca_bundle, args=(kube, cfg.configuration, ca), name="webhook-ca",
                         daemon=True).start()
    log.info("admission webhook on %s:%d (certificate for %s; %s)", cfg.bind, cfg.port, ", ".join(cfg.cert_hosts),
             f"CA into MutatingWebhookConfiguration {cfg.configuration}" if ca is not None and cfg.configuration
             else "caBundle filled by the installer")


def _certificate(cfg: WebhookConfig) -> tuple[str, str, Optional[bytes]]:
    """(certfile, keyfile, CA to publish): cert-manager's files, or a fresh pair of ours."""
    if cfg.cert_dir:
        return f"{cfg.cert_dir}/tls.crt", f"{cfg.cert_dir}/tls.key", None
    made = certs.make_serving_cert(cfg.cert_hosts)
    certfile, keyfile = certs.write_private(made)
    return str(certfile), str(keyfile), made.ca_pem


def _keep_ca_bundle(kube: Any, name: str, ca_pem: bytes) -> None:
    """Put our CA into the configuration's caBundle, and again whenever it is gone (a
    `helm upgrade` or another replica can rewrite it)."""
    while True:
        try:
            if kube.put_ca_bundle(name, functools.partial(certs.merge_bundle, ca_pem=ca_pem)):
                log.info("caBundle of MutatingWebhookConfiguration %s now trusts this replica's CA", name)
        except Exception as exc:  # noqa: BLE001 - retried; writes pass meanwhile (failurePolicy Ignore)
            log.warning("cannot set the caBundle of MutatingWebhookConfiguration %s: %s; retrying in %.0fs", name,
                        getattr(exc, "status", None) or exc, CA_CHECK_S)
        time.sleep(CA_CHECK_S)
