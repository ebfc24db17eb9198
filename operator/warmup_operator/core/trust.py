"""Who may make the operator change what (pure).

The operator patches workloads with its own identity, so a KernelWarmup must not be a
way to change a workload its author could not change: the workload's owner opts in on
the workload itself, images come from the operator's install-time configuration, and a
hostPath cache must be one of the folders the installer allowed. Each check here names
the field to fix; the reconciler reports it in the KernelWarmup's status and an Event
and changes nothing.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from warmup_operator.core import names
from warmup_operator.core.containers import InjectionError

# On the workload's own metadata (a label or an annotation), naming the KernelWarmup
# allowed to inject into it. Only someone who may edit the workload can set it.
OPT_IN = f"{names.GROUP}/kernelwarmup"
DEFAULT_HOSTPATH_ALLOWED = ("/var/cache/kernel-warmup",)
# Interpreters spec.warmer.python may name by default: found on the serving image's own PATH.
DEFAULT_WARMER_PYTHONS = ("python3", "python")
# Pod Security Admission levels that refuse hostPath volumes.
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"
PSA_NO_HOSTPATH = ("baseline", "restricted")


class TrustError(InjectionError):
    """The injection is refused (a KernelWarmup asks for something it may not have, or
    the workload uses a reserved name); ``field`` names what to change, ``reason`` is the
    Event reason."""

    def __init__(self, field_path: str, message: str, reason: str):
        super().__init__(field_path, message)
        self.reason = reason


@dataclass(frozen=True)
class TrustPolicy:
    """Install-time choices (chart values -> operator flags)."""

    warmer_images: tuple[str, ...] = ()  # allowed spec.warmer.image values; "x/*" allows the prefix "x/"
    hostpath_allowed: tuple[str, ...] = DEFAULT_HOSTPATH_ALLOWED  # exact folders a hostPath cache may use
    warmer_pythons: tuple[str, ...] = DEFAULT_WARMER_PYTHONS  # allowed spec.warmer.python values, exactly


def opt_in_value(meta: Mapping[str, Any]) -> Optional[str]:
    """The KernelWarmup a workload opted into (label first, then annotation)."""
    for section in ("labels", "annotations"):
        value = (meta.get(section) or {}).get(OPT_IN)
        if isinstance(value, str) and value:
            return value
    return None


def opted_in(meta: Mapping[str, Any], cr_name: str) -> bool:
    return opt_in_value(meta) == cr_name


def not_opted_in(kind: str, name: str, cr_name: str, meta: Mapping[str, Any]) -> TrustError:
    other = opt_in_value(meta)
    why = f"it opted into KernelWarmup {other!r}" if other else "it has not opted in"
    return TrustError(
        f"{kind}/{name}.metadata.labels[{OPT_IN}]",
        f"selected but not injected: {why}. The workload's owner allows this KernelWarmup with "
        f"`kubectl label {kind.lower()} {name} {OPT_IN}={cr_name}` (or the same annotation)",
        "NotOptedIn")


def image_allowed(image: str, allowed: tuple[str, ...]) -> bool:
    for entry in allowed:
        if entry.endswith("*") and image.startswith(entry[:-1]):
            return True
        if image == entry:
            return True
    return False


def check_image(image: Optional[str], policy: TrustPolicy) -> None:
    """spec.warmer.image runs with the workload's env, token, volumes and GPUs: only an
    image the installer allowed may replace the serving container's own."""
    if image is None or image_allowed(image, policy.warmer_images):
        return
    allowed = ", ".join(policy.warmer_images) or "none: the warmer always runs in the serving image"
    raise TrustError("spec.warmer.image", f"{image!r:.120} is not in the operator's allowed warmer images "
                     f"({allowed}); remove the field, or ask the installer to add it (chart value "
                     "warmer.allowedImages)", "ImageNotAllowed")


def check_python(python: Optional[str], policy: TrustPolicy) -> None:
    """spec.warmer.python is the program the warmer container executes, with the workload's
    env, volumes and GPUs: a KernelWarmup author picks one the installer listed, never a
    path of their own (a file on the cache volume, say). Unset: the serving image's own."""
    if python is None or python in policy.warmer_pythons:
        return
    allowed = ", ".join(policy.warmer_pythons) or "none"
    raise TrustError("spec.warmer.python", f"{python!r:.120} is not one of the interpreters the operator allows "
                     f"({allowed}); remove the field (the warmer then uses the serving container's own Python), "
                     "or ask the installer to add it (chart value warmer.allowedPythons)", "PythonNotAllowed")


def python_entry_problem(entry: str) -> Optional[str]:
    """Why an install-time interpreter entry is refused (None: fine)."""
    if names.PYTHON_NAME_RE.match(entry) or clean_abs_path(entry):
        return None
    return f"{entry!r}: give a python name found on the image's PATH (python3) or a normalised absolute path"


def clean_abs_path(path: str) -> bool:
    """Absolute and already normal: no '//', '/.', '/..' parts, no trailing '/'."""
    return path.startswith("/") and path != "/" and posixpath.normpath(path) == path and "//" not in path


def check_hostpath(source: Mapping[str, Any], policy: TrustPolicy) -> None:
    hp = source.get("hostPath")
    if hp is None:
        return
    path = str(hp.get("path", ""))
    if not clean_abs_path(path):
        raise TrustError("spec.cache.hostPath.path", f"{path!r:.200} is not a normalised absolute path "
                         "(no '//', '.', '..' parts or trailing '/')", "HostPathNotAllowed")
    if path not in policy.hostpath_allowed:
        allowed = ", ".join(policy.hostpath_allowed) or "none"
        raise TrustError("spec.cache.hostPath.path", f"{path} is not one of the node folders the operator may "
                         f"mount ({allowed}); use one of them, a PVC or an emptyDir, or ask the installer "
                         "(chart value cache.hostPathAllowed)", "HostPathNotAllowed")


def check_psa_hostpath(source: Mapping[str, Any], namespace: str, ns_labels: Mapping[str, str]) -> None:
    """A hostPath cache in a namespace whose Pod Security level refuses hostPath would
    leave the rollout stuck (the ReplicaSet cannot create Pods): say so before it starts."""
    level = (ns_labels or {}).get(PSA_ENFORCE)
    if "hostPath" in source and level in PSA_NO_HOSTPATH:
        raise TrustError("spec.cache.hostPath", f"namespace {namespace} enforces Pod Security level {level!r}, "
                         "which refuses hostPath volumes: Pods would not be created. Use a PVC or an emptyDir",
                         "HostPathRefusedByPodSecurity")


def check_spec(spec: Any, policy: TrustPolicy, namespace: str, ns_labels: Optional[Mapping[str, str]]) -> None:
    """Every install-time limit on what a KernelWarmup may ask for (TrustError)."""
    check_image(spec.container.image, policy)
    check_python(spec.container.python, policy)
    check_hostpath(spec.cache.source, policy)
    check_psa_hostpath(spec.cache.source, namespace, ns_labels or {})


def cache_key(namespace: str, source: Mapping[str, Any]) -> Optional[tuple[str, ...]]:
    """One shared cache: a node folder's sub-folder of one namespace (its trust domain,
    ``CacheVolume.volume``), or a namespace's PVC (emptyDir: none)."""
    if "hostPath" in source:
        return ("hostPath", str(source["hostPath"].get("path", "")), namespace)
    if "persistentVolumeClaim" in source:
        return ("persistentVolumeClaim", namespace, str(source["persistentVolumeClaim"].get("claimName", "")))
    return None


def _described(key: tuple[str, ...]) -> str:
    return f"hostPath {key[1]}, namespace {key[2]}'s folder" if key[0] == "hostPath" else f"{key[0]} {key[-1]}"


def check_cache_mount(cr: Any, spec: Any, peers: list[tuple[Any, Any]]) -> None:
    """Triton's group files hold absolute paths: one cache mounted at two paths would flip
    between warm and cold (each warmer rebuilding the other's entries). The oldest
    KernelWarmup using a cache fixes its mount path; a newer one with another path is
    refused. ``peers``: (CRRecord, KernelWarmupSpec) of every KernelWarmup in the cluster."""
    key = cache_key(cr.namespace, spec.cache.source)
    if key is None:
        return
    rank = (cr.created, cr.namespace, cr.name)
    for other, ospec in peers:
        if (other.namespace, other.name) == (cr.namespace, cr.name) or other.deleting:
            continue
        if (cache_key(other.namespace, ospec.cache.source) == key and ospec.cache.mount_path != spec.cache.mount_path
                and (other.created, other.namespace, other.name) < rank):
            raise TrustError("spec.cache.mountPath", f"{spec.cache.mount_path} differs from {ospec.cache.mount_path}, where "
                             f"KernelWarmup {other.namespace}/{other.name} mounts the same cache "
                             f"({_described(key)}); Triton's cache holds absolute paths, so use {ospec.cache.mount_path}",
                             "CacheMountPathConflict")
