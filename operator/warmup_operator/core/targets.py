"""Which workloads a KernelWarmup selects, and where each kind keeps its pod templates."""

from __future__ import annotations

from typing import Any, Mapping

from warmup_operator.core.dicts import get_path
from warmup_operator.core.kernelwarmup import Requirement, Targets
from warmup_operator.core.kinds import WorkloadKind


def templates(kind: WorkloadKind, obj: Mapping[str, Any]) -> list[tuple[tuple[str, ...], dict]]:
    """The pod templates present in ``obj`` (LWS's leaderTemplate is optional)."""
    out = []
    for p in kind.template_paths:
        t = get_path(obj, p)
        if isinstance(t, dict):
            out.append((p, t))
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
