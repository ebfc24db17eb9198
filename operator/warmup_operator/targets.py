"""Which workloads a KernelWarmup selects, and where each kind keeps its pod templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from warmup_operator.crspec import Requirement, Targets


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


def get_path(obj: Mapping[str, Any], path: Iterable[str]) -> Optional[Any]:
    cur: Any = obj
    for p in path:
        if not isinstance(cur, Mapping) or p not in cur:
            return None
        cur = cur[p]
    return cur


def templates(kind: WorkloadKind, obj: Mapping[str, Any]) -> list[tuple[tuple[str, ...], dict]]:
    """The pod templates present in ``obj`` (LWS's leaderTemplate is optional)."""
    out = []
    for p in kind.template_paths:
        t = get_path(obj, p)
        if isinstance(t, dict):
            out.append((p, t))
    return out


def nest(path: tuple[str, ...], value: Any) -> dict:
    out: Any = value
    for p in reversed(path):
        out = {p: out}
    return out


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def requirement_matches(req: Requirement, labels: Mapping[str, str]) -> bool:
    if req.operator == "Exists":
        return req.key in labels
    if req.operator == "DoesNotExist":
        return req.key not in labels
    if req.operator == "In":
        return req.key in labels and labels[req.key] in req.values
    if req.operator == "NotIn":
        return req.key not in labels or labels[req.key] not in req.values
    return False


def selects(targets: Targets, kind: str, name: str, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics, plus the explicit names list."""
    if kind not in targets.kinds:
        return False
    if name in targets.names:
        return True
    if not targets.has_selector:
        return False
    labels = labels or {}
    if any(labels.get(k) != v for k, v in targets.match_labels.items()):
        return False
    return all(requirement_matches(r, labels) for r in targets.match_expressions)


def lists_are_keyed(crd: Mapping[str, Any], version: str = "v1") -> bool:
    """Whether a CRD's embedded pod template keys initContainers/volumes/env by name.

    Server-side apply only merges list entries when the schema says the list is a map;
    an atomic list would make the operator own (and overwrite) the user's whole list,
    so a LeaderWorkerSet CRD without these markers is not injected into.
    """
    for v in (crd.get("spec") or {}).get("versions") or []:
        if v.get("name") != version:
            continue
        schema = ((v.get("schema") or {}).get("openAPIV3Schema") or {})
        pod = get_path(schema, ("properties", "spec", "properties", "leaderWorkerTemplate", "properties",
                                "workerTemplate", "properties", "spec", "properties"))
        if not isinstance(pod, Mapping):
            return False
        for list_name in ("initContainers", "volumes", "containers"):
            node = pod.get(list_name) or {}
            if node.get("x-kubernetes-list-type") != "map":
                return False
        return True
    return False
