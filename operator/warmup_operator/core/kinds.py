"""The workload kinds the operator injects into: the one list, and where each keeps its pod templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class WorkloadKind:
    kind: str
    group: str
    version: str
    plural: str
    # Paths (under the object root) of the pod templates to inject into.
    template_paths: tuple[tuple[str, ...], ...]
    # A kind served by a CRD: its name; injected only where that CRD keys the templates'
    # lists by name (server-side apply would replace the user's lists otherwise).
    crd: Optional[str] = None
    # Several Pods that warm together, in their init containers (no prewarm Job stands in).
    multi_pod: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{base}/namespaces/{namespace}/{self.plural}/{name}"


DEPLOYMENT = WorkloadKind("Deployment", "apps", "v1", "deployments", (("spec", "template"),))
STATEFULSET = WorkloadKind("StatefulSet", "apps", "v1", "statefulsets", (("spec", "template"),))
LEADERWORKERSET = WorkloadKind(
    "LeaderWorkerSet", "leaderworkerset.x-k8s.io", "v1", "leaderworkersets",
    (("spec", "leaderWorkerTemplate", "workerTemplate"), ("spec", "leaderWorkerTemplate", "leaderTemplate")),
    crd="leaderworkersets.leaderworkerset.x-k8s.io", multi_pod=True,
)
KINDS: dict[str, WorkloadKind] = {k.kind: k for k in (DEPLOYMENT, STATEFULSET, LEADERWORKERSET)}
