"""The API calls of prewarm (Jobs, their Pods, Nodes, the cache's PVC), mixed into ``kube.Kube``.

Each names the RBAC rule it needs (charts/kernel-warmup/README.md lists them): jobs list,
create, delete (and watch, for kopf); pods list; nodes list; persistentvolumeclaims get.
"""

from __future__ import annotations

from typing import Any, Callable, Optional
from urllib.parse import quote


class PrewarmApi:
    _call: Callable[..., Any]
    _kubernetes: Any

    def _missing_ok(self, call: Callable[[], Any], *statuses: int) -> Any:
        try:
            return call()
        except self._kubernetes.client.exceptions.ApiException as exc:
            if exc.status in statuses:
                return None
            raise

    def list_jobs(self, namespace: str, selector: str) -> list[dict]:
        out = self._call("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs", query=[("labelSelector", selector)])
        return list((out or {}).get("items") or [])

    def create_job(self, namespace: str, job: dict) -> Optional[dict]:
        """The created Job, or None when one of that name exists already (adopted next time)."""
        return self._missing_ok(lambda: self._call("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body=job), 409)

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete the Job and, in the background, its Pods (a Job's default would orphan them)."""
        self._missing_ok(lambda: self._call("DELETE", f"/apis/batch/v1/namespaces/{namespace}/jobs/{quote(name)}",
                                            body={"propagationPolicy": "Background"}), 404)

    def list_pods(self, namespace: str, selector: str) -> list[dict]:
        out = self._call("GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", selector)])
        return list((out or {}).get("items") or [])

    def list_nodes(self) -> list[dict]:
        return list((self._call("GET", "/api/v1/nodes") or {}).get("items") or [])

    def get_pvc(self, namespace: str, name: str) -> Optional[dict]:
        return self._missing_ok(lambda: self._call(
            "GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{quote(name)}"), 404)
