"""The operator's API-server I/O (the only module that imports the kubernetes client).

Server-side apply goes through the generic ``call_api`` so Deployments, StatefulSets and
LeaderWorkerSets share one code path: PATCH with ``application/apply-patch+yaml``, the
operator's own ``fieldManager`` and ``force=true`` (the operator owns exactly the fields
in what it applies; force only matters for a user's literal PYTHONPATH, see inject.py).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from warmup_operator import config, metrics
from warmup_operator.config import OperatorConfig
from warmup_operator.core import names
from warmup_operator.core.kinds import WorkloadKind
from warmup_operator.kube_prewarm import PrewarmApi

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for one API request: 409/429/5xx and dropped connections are retried a few
    times with exponential, jittered delays (and the server's Retry-After when it sends
    one); anything else (404, 422 ...) is returned at once. Longer outages are the kopf
    handler's job (it re-runs with its own delay), so the total here stays a few seconds."""

    attempts: int = 5
    base_s: float = 0.2
    cap_s: float = 5.0
    jitter: float = 0.5  # each delay is scaled by a random factor in [1 - jitter, 1]

    def delay(self, attempt: int, retry_after: Optional[float] = None, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.cap_s)
        d = min(self.cap_s, self.base_s * (2 ** attempt))
        return d * (1 - self.jitter * rand())


def _retry_after(resp: Any) -> Optional[float]:
    try:
        value = (getattr(resp, "headers", None) or {}).get("Retry-After")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class Kube(PrewarmApi):
    def __init__(self, api_client: Any = None, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep, timeout_s: tuple[float, float] = (10, 60)):
        import kubernetes

        if api_client is None:
            api_client = new_api_client(config.current())
        self.client = api_client
        self.retry = retry
        self._sleep = sleep
        self._timeout_s = timeout_s  # (connect, read) of each request
        self._kubernetes = kubernetes
        self._crd_cache: dict[str, Optional[dict]] = {}
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, *, body: Any = None, query: Optional[list] = None,
              content_type: str = "application/json") -> Any:
        """One request through the client's auth and TLS, retried per ``self.retry``;
        raises ApiException on a final status >= 400."""
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                return self._call_once(method, path, body=body, query=query, content_type=content_type)
            except Exception as exc:
                if last or not is_retryable(exc):
                    raise
                wait = self.retry.delay(attempt, getattr(exc, "retry_after", None))
                log.warning("%s %s: %s; retry %d/%d in %.1fs", method, path, _brief(exc), attempt + 1,
                            self.retry.attempts - 1, wait)
                metrics.API_RETRIES.labels(str(getattr(exc, "status", None) or "connection")).inc()
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _call_once(self, method: str, path: str, *, body: Any, query: Optional[list], content_type: str) -> Any:
        import json

        _, url, headers, _, _ = self.client.param_serialize(
            method, path, query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            auth_settings=["BearerToken"])
        resp = self.client.call_api(method, url, header_params=headers,
                                    body=body,
                                    _request_timeout=self._timeout_s)
        data = resp.read()
        if resp.status >= 400:
            exc = self._kubernetes.client.exceptions.ApiException(
                status=resp.status, reason=resp.reason, body=data.decode(errors="replace") if data else "")
            exc.retry_after = _retry_after(resp)
            raise exc
        return json.loads(data) if data else None

    def get_workload(self, kind: WorkloadKind, namespace: str, name: str) -> Optional[dict]:
        try:
            return self._call("GET", kind.path(namespace, name))
        except self._kubernetes.client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, kind: WorkloadKind, namespace: str, name: str, body: dict) -> dict:
        """Server-side apply ``body`` as the operator's field manager."""
        return self._call("PATCH", kind.path(namespace, name), body=body,
                          query=[("fieldManager", names.FIELD_MANAGER), ("force", "true")],
                          content_type="application/apply-patch+yaml")

    def patch_cr_status(self, namespace: str, name: str, status: dict) -> None:
        path = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{namespace}/{names.PLURAL}/{name}/status"
        try:
            self._call("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")
        except self._kubernetes.client.exceptions.ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise

    OWNER_PATHS = {"ReplicaSet": "/apis/apps/v1/namespaces/{ns}/replicasets/{name}",
                   "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
                   "Pod": "/api/v1/namespaces/{ns}/pods/{name}"}

    def controller_of(self, kind: str, namespace: str, name: str, uid: str) -> Optional[tuple[str, str, str]]:
        """The controlling owner (kind, name, uid) of the object ``kind/name`` if it is the
        one with ``uid``; None when it is not there, is another object, or has no owner."""
        path = self.OWNER_PATHS.get(kind)
        if path is None:
            return None
        try:
            obj = self._call("GET", path.format(ns=namespace, name=name))
        except self._kubernetes.client.exceptions.ApiException as exc:
            if exc.status not in (403, 404):
                raise
            return None
        meta = (obj or {}).get("metadata") or {}
        if meta.get("uid") != uid:
            return None
        ref = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
        return (str(ref.get("kind", "")), str(ref.get("name", "")), str(ref.get("uid", ""))) if ref else None

    def namespace_labels(self, name: str) -> Optional[dict]:
        """A namespace's labels (Pod Security levels); None when it cannot be read."""
        try:
            ns = self._call("GET", f"/api/v1/namespaces/{name}")
        except self._kubernetes.client.exceptions.ApiException as exc:
            if exc.status not in (403, 404):
                raise
            return None
        return dict(((ns or {}).get("metadata") or {}).get("labels") or {})

    def get_crd(self, name: str) -> Optional[dict]:
        with self._lock:
            if name in self._crd_cache:
                return self._crd_cache[name]
        try:
            crd = self._call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        except self._kubernetes.client.exceptions.ApiException as exc:
            if exc.status not in (403, 404):
                raise
            crd = None
        with self._lock:
            self._crd_cache[name] = crd
        return crd

    # --- the admission webhook (webhook.py) -------------------------------------------------

    def whoami(self) -> Optional[str]:
        """The operator's own user name (SelfSubjectReview; None when it cannot be asked)."""
        try:
            review = self._call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        except self._kubernetes.client.exceptions.ApiException as exc:
            log.warning("cannot ask the API who the operator is: %s", _brief(exc))
            return None
        return (((review or {}).get("status") or {}).get("userInfo") or {}).get("username")

    WEBHOOK_CONFIGS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"

    def put_ca_bundle(self, name: str, merge: Callable[[str], str]) -> bool:
        """Set every webhook's caBundle in the MutatingWebhookConfiguration ``name`` to
        ``merge(current)``, guarded by its resourceVersion (a replica that wrote meanwhile
        makes us read again). False when there is nothing to change."""
        for _ in range(5):
            conf = self._call("GET", f"{self.WEBHOOK_CONFIGS}/{name}")
            hooks = conf.get("webhooks") or []
            new = [merge(((h.get("clientConfig") or {}).get("caBundle")) or "") for h in hooks]
            if all(n == (h.get("clientConfig") or {}).get("caBundle") for n, h in zip(new, hooks)):
                return False
            patch = {"metadata": {"resourceVersion": conf["metadata"]["resourceVersion"]},
                     "webhooks": [{"name": h["name"], "clientConfig": {"caBundle": n}} for h, n in zip(hooks, new)]}
            try:
                self._call_once("PATCH", f"{self.WEBHOOK_CONFIGS}/{name}", body=patch, query=None,  # no retry of a 409
                                content_type="application/strategic-merge-patch+json")
                return True
            except self._kubernetes.client.exceptions.ApiException as exc:
                if exc.status != 409:
                    raise
        raise RuntimeError(f"MutatingWebhookConfiguration {name}: caBundle kept changing under us (5 tries)")

    # --- the leader-election Lease (leader.py) ---------------------------------------------

    def get_lease(self, namespace: str, name: str) -> Optional[dict]:
        return self._missing_ok(lambda: self._call("GET", _lease_path(namespace, name)), 404)

    def write_lease(self, namespace: str, name: str, spec: dict, resource_version: Optional[str]) -> bool:
        """Create the Lease (no ``resource_version``) or replace the one read at that
        version; False when another writer got there first (409), so nothing was written."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        try:
            if resource_version is None:
                self._call("POST", _lease_path(namespace, ""), body=body)
            else:
                body["metadata"]["resourceVersion"] = resource_version
                self._call("PUT", _lease_path(namespace, name), body=body)
        except self._kubernetes.client.exceptions.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True


def _lease_path(namespace: str, name: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases" + (f"/{name}" if name else "")


def use_kubeconfig(path: str) -> None:
    """--kubeconfig for every client: ours and kopf's logins read $KUBECONFIG, and the
    kubernetes client (kopf's first login) took its default file from $KUBECONFIG when it
    was imported, before the flag was read."""
    import os

    import kubernetes.config.kube_config as kube_config

    os.environ["KUBECONFIG"] = path
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path


def new_api_client(cfg: OperatorConfig) -> Any:
    """In-cluster credentials when running in a Pod, else the kubeconfig."""
    import kubernetes

    client_config = kubernetes.client.Configuration()
    if cfg.in_cluster:
        kubernetes.config.load_incluster_config(client_configuration=client_config)
    else:
        kubernetes.config.load_kube_config(config_file=cfg.kubeconfig, client_configuration=client_config)
    # One connection per handler thread (kopf's executor), not urllib3's default of 4.
    client_config.connection_pool_maxsize = cfg.workers + 4
    return kubernetes.client.ApiClient(client_config)


def is_retryable(exc: BaseException) -> bool:
    """409 (conflict), 429 and 5xx, and a connection that failed or dropped, are worth a
    retry; 4xx validation errors (422), 404 and programming errors are not."""
    status = getattr(exc, "status", None)
    if status is not None:
        return status in (409, 429) or status >= 500
    return isinstance(exc, (OSError, ConnectionError)) or type(exc).__module__.startswith("urllib3")


def _brief(exc: BaseException) -> str:
    """One line about a failed request: status and reason, never the body (it can echo
    the object, env values included)."""
    status = getattr(exc, "status", None)
    if status is not None:
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    return type(exc).__name__
