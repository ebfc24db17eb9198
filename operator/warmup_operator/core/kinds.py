"""The workload kinds the operator injects into: the one list, and where each keeps its pod templates."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkloadKind:
    kind: str
    group: str
    version: str
    plural: str
    # Paths (under the object root) of the pod templates to inject into.
    template_paths: tuple[tuple[str, ...], ...]

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
)
KINDS: dict[str, WorkloadKind] = {k.kind: k for k in (DEPLOYMENT, STATEFULSET, LEADERWORKERSET)}
