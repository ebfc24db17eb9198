"""The serving container and what the injected containers take from it (pure)."""

from __future__ import annotations

import copy
import posixpath
from typing import Any, Optional

from kernel_warmer.errors import FieldError

# Extended resources that mean "this container has accelerators".
GPU_RESOURCE_SUFFIXES = ("/gpu",)
GPU_RESOURCE_PREFIXES = ("nvidia.com/mig-", "gpu.intel.com/")


class InjectionError(FieldError):
    """The workload cannot take the injection; ``field`` names what to change."""


def is_gpu_resource(name: str) -> bool:
    return name.endswith(GPU_RESOURCE_SUFFIXES) or name.startswith(GPU_RESOURCE_PREFIXES)


def gpu_resources(container: dict) -> dict[str, dict[str, Any]]:
    res = container.get("resources") or {}
    return {
        section: {k: v for k, v in (res.get(section) or {}).items() if is_gpu_resource(k)}
        for section in ("limits", "requests")
    }


def pick_serving_container(template: dict, name: Optional[str]) -> dict:
    containers = (template.get("spec") or {}).get("containers") or []
    if name:
        for c in containers:
            if c.get("name") == name:
                return c
        have = ", ".join(c.get("name", "?") for c in containers) or "none"
        raise InjectionError("spec.servingContainer", f"no container named {name!r} in the workload (containers: {have})")
    gpu = [c for c in containers if any(gpu_resources(c).values())]
    if len(gpu) == 1:
        return gpu[0]
    if not gpu:
        raise InjectionError("spec.servingContainer",
                             "no container requests GPUs (e.g. nvidia.com/gpu); set spec.servingContainer or add GPU limits")
    raise InjectionError("spec.servingContainer",
                         f"several containers request GPUs ({', '.join(c['name'] for c in gpu)}); set spec.servingContainer")


def norm_path(p: str) -> str:
    """A mount path as the kubelet resolves it ("/a//b/./" and "/a/b" are one place)."""
    return "/" + posixpath.normpath("/" + p).lstrip("/") if p else ""


def env_entry(container: dict, name: str) -> Optional[dict]:
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e
    return None


def merge_resources(serving: dict, override: dict) -> dict:
    base = copy.deepcopy(serving.get("resources") or {})
    for section in ("limits", "requests"):
        if override.get(section):
            base.setdefault(section, {}).update(override[section])
    for k, v in override.items():
        if k not in ("limits", "requests"):
            base[k] = copy.deepcopy(v)
    # GPUs always follow the serving container: the warmer must see the same devices.
    for section, gpus in gpu_resources(serving).items():
        if gpus:
            base.setdefault(section, {}).update(gpus)
    return {k: v for k, v in base.items() if v}


# What the bootstrap init container runs as: our own image, our own code, no needs.
BOOTSTRAP_SECURITY_CONTEXT = {
    "runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def warmer_security_context(serving: Optional[dict]) -> dict:
    """The warmer runs in the serving image as the serving user (its cache files must be
    readable and replaceable by the server, and Triton/ptxas need the same writable paths),
    so the user, group, read-only root and SELinux/AppArmor settings are the serving
    container's. What the warmer never needs is taken away even if the server has it: no
    privileged mode, no privilege escalation, no capabilities, a default seccomp profile
    unless the serving container names one."""
    sc = copy.deepcopy(serving or {})
    sc.pop("privileged", None)
    sc["allowPrivilegeEscalation"] = False
    sc["capabilities"] = {"drop": ["ALL"]}
    sc.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    if sc.get("procMount") not in (None, "Default"):
        sc.pop("procMount")
    return sc
