"""The operator's API-server I/O (the only module that imports the kubernetes client).

Server-side apply goes through the generic ``call_api`` so Deployments, StatefulSets and
LeaderWorkerSets share one code path: PATCH with ``application/apply-patch+yaml``, the
operator's own ``fieldManager`` and ``force=true`` (the operator owns exactly the fields
in what it applies; force only matters for a user's literal PYTHONPATH, see inject.py).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Optional

from warmup_operator import names
from warmup_operator.targets import WorkloadKind

log = logging.getLogger(__name__)


class Kube:
    def __init__(self, api_client: Any = None):
        import kubernetes

        if api_client is None:
            api_client = new_api_client()
        self.client = api_client
        self._kubernetes = kubernetes
        self._crd_cache: dict[str, Optional[dict]] = {}
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, *, body: Any = None, query: Optional[list] = None,
              content_type: str = "application/json") -> Any:
        """One request through the client's auth and TLS; raises ApiException on >= 400."""
        import json

        _, url, headers, _, _ = self.client.param_serialize(
            method, path, query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            auth_settings=["BearerToken"])
        resp = self.client.call_api(method, url, header_params=headers,
                                    body=body,
                                    _request_timeout=(10, 60))
        data = resp.read()
        if resp.status >= 400:
            raise self._kubernetes.client.exceptions.ApiException(
                status=resp.status, reason=resp.reason, body=data.decode(errors="replace") if data else "")
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


def new_api_client() -> Any:
    """In-cluster credentials when running in a Pod, else the kubeconfig."""
    import kubernetes

    config = kubernetes.client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=config)
    else:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=config)
    # One connection per handler thread (kopf's executor), not urllib3's default of 4.
    config.connection_pool_maxsize = int(os.environ.get("KERNEL_WARMUP_WORKERS", "16")) + 4
    return kubernetes.client.ApiClient(config)


def is_retryable(exc: BaseException) -> bool:
    """409 (conflict), 429 and 5xx are worth a retry; 4xx validation errors are not."""
    status = getattr(exc, "status", None)
    return status is None or status in (409, 429) or status >= 500
