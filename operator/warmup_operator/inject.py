"""Injection as pure functions over pod templates (plain dicts, as the API returns them).

``user_view(template)`` strips whatever the operator added earlier, giving the user's own
template back; ``build_injection(spec, user_template, ...)`` returns the *fragment* the
operator server-side-applies (only its own list entries, keyed as the API keys them:
initContainers and volumes by name, volumeMounts by mountPath, env by name) and the hash
that goes into the template's annotation. ``apply_fragment`` merges a fragment into a
template the way server-side apply does for these lists; it serves the table tests and
the demo's printout, the API server does the real merge.

PYTHONPATH: the serving container's PYTHONPATH gets the sitecustomize folder in front.
If the user sets PYTHONPATH to a literal value V, the operator takes over that one value
as ``<site>:V`` and removal applies ``V`` back (the template returns to the user's value;
the operator's field manager keeps owning it, so a user's *server-side* apply of a new
PYTHONPATH needs --force-conflicts). A PYTHONPATH from valueFrom cannot be prefixed: the
sitecustomize is then skipped with a warning.
"""

from __future__ import annotations

import copy
import hashlib
import posixpath
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from kernel_warmer.spec import SPEC_ENV

from warmup_operator import names
from warmup_operator.crspec import KernelWarmupSpec

# Extended resources that mean "this container has accelerators".
GPU_RESOURCE_SUFFIXES = ("/gpu",)
GPU_RESOURCE_PREFIXES = ("nvidia.com/mig-", "gpu.intel.com/")

WARMER_COMMAND_TAIL = ["-m", "kernel_warmer", "run", "--spec-env", SPEC_ENV]
BOOTSTRAP_COMMAND = ["python3", "-m", "kernel_warmer.bootstrap", "--dest", names.PKG_MOUNT]


class InjectionError(ValueError):
    """The workload cannot take the injection; ``field`` names what to change."""

    def __init__(self, field_path: str, message: str):
        self.field = field_path
        self.message = message
        super().__init__(f"{field_path}: {message}")


@dataclass(frozen=True)
class Injection:
    fragment: dict  # the pod-template fragment to apply (annotations included)
    hash: str
    serving_container: str
    warnings: tuple[str, ...] = field(default=())


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


def _env_value(container: dict, name: str) -> Optional[dict]:
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e
    return None


def strip_site(pythonpath: str) -> str:
    """The user's part of a PYTHONPATH the operator prefixed."""
    if pythonpath == names.PKG_SITE_DIR:
        return ""
    if pythonpath.startswith(names.PKG_SITE_DIR + ":"):
        return pythonpath[len(names.PKG_SITE_DIR) + 1:]
    return pythonpath


def user_view(template: dict) -> dict:
    """The template minus everything the operator injects (a deep copy)."""
    t = copy.deepcopy(template or {})
    meta = t.setdefault("metadata", {})
    ours = (meta.get("annotations") or {}).get(names.ANN_HASH) is not None
    if meta.get("annotations"):
        for k in (names.ANN_HASH, names.ANN_INJECTED_BY):
            meta["annotations"].pop(k, None)
        if not meta["annotations"]:
            del meta["annotations"]
    spec = t.setdefault("spec", {})
    if "initContainers" in spec:
        spec["initContainers"] = [c for c in spec["initContainers"] if c.get("name") not in names.INIT_CONTAINERS]
        if not spec["initContainers"]:
            del spec["initContainers"]
    if "volumes" in spec:
        spec["volumes"] = [v for v in spec["volumes"] if v.get("name") not in names.VOLUMES]
        if not spec["volumes"]:
            del spec["volumes"]
    for c in spec.get("containers") or []:
        if "volumeMounts" in c:
            c["volumeMounts"] = [m for m in c["volumeMounts"] if m.get("name") not in names.VOLUMES]
            if not c["volumeMounts"]:
                del c["volumeMounts"]
        if "env" in c and ours:
            env = []
            for e in c["env"]:
                if e.get("name") in names.SERVING_ENV:
                    continue
                if e.get("name") == names.ENV_PYTHONPATH and "value" in e:
                    rest = strip_site(e.get("value") or "")
                    if not rest:
                        continue
                    e = {**e, "value": rest}
                env.append(e)
            c["env"] = env
            if not c["env"]:
                del c["env"]
    return t


def _merge_resources(serving: dict, override: dict) -> dict:
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


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def build_injection(spec: KernelWarmupSpec, user_template: dict, *, cr_name: str,
                    default_bootstrap_image: str = names.DEFAULT_BOOTSTRAP_IMAGE) -> Injection:
    """The fragment that injects ``spec`` into ``user_template`` (the user's own view)."""
    tspec = (user_template or {}).get("spec") or {}
    serving = pick_serving_container(user_template, spec.serving_container)
    sname = serving["name"]
    mount = spec.cache.mount_path
    warnings: list[str] = []

    # Collisions with the user's own objects: never overwrite them.
    for v in tspec.get("volumes") or []:
        if v.get("name") in names.VOLUMES:
            raise InjectionError("spec.cache", f"the workload already has a volume named {v['name']!r} (reserved)")
    for c in tspec.get("initContainers") or []:
        if c.get("name") in names.INIT_CONTAINERS:
            raise InjectionError("spec", f"the workload already has an init container named {c['name']!r} (reserved)")
    for m in serving.get("volumeMounts") or []:
        p = norm_path(m.get("mountPath") or "")
        if p == norm_path(mount):
            raise InjectionError("spec.cache.mountPath",
                                 f"{mount} collides with volumeMount {m.get('name')!r} of container {sname!r}; choose another mountPath")
        if p == names.PKG_MOUNT or p.startswith(names.PKG_MOUNT + "/"):
            raise InjectionError(f"containers[{sname}].volumeMounts",
                                 f"{m.get('mountPath')} is under {names.PKG_MOUNT}, reserved for the operator's package folder")
    for e in serving.get("env") or []:
        if e.get("name") in names.SERVING_ENV:
            raise InjectionError(f"containers[{sname}].env[{e['name']}]",
                                 "is set by the operator (it points at the warm cache); remove it from the workload")

    triton_dir = f"{mount}/triton"
    fi_dir = f"{mount}/flashinfer"
    cache_env = [
        {"name": names.ENV_TRITON_CACHE, "value": triton_dir},
        {"name": names.ENV_FLASHINFER_DIR, "value": fi_dir},
        {"name": names.ENV_CACHE_ROOT, "value": mount},
    ]

    user_pp = _env_value(serving, names.ENV_PYTHONPATH)
    serving_env = list(cache_env)
    if spec.sitecustomize:
        if user_pp is None:
            serving_env.append({"name": names.ENV_PYTHONPATH, "value": names.PKG_SITE_DIR})
        elif "value" in user_pp and "valueFrom" not in user_pp:
            rest = user_pp.get("value") or ""
            value = f"{names.PKG_SITE_DIR}:{rest}" if rest else names.PKG_SITE_DIR
            serving_env.append({"name": names.ENV_PYTHONPATH, "value": value})
        else:
            warnings.append(f"container {sname!r} takes PYTHONPATH from valueFrom, which cannot be prefixed: "
                            "the FlashInfer tactics will not be loaded by the server (set a literal PYTHONPATH)")

    # The warmer sees what the server sees: same env (TRITON_* vars are in Triton's cache
    # key), same mounts (the model's config.json), same GPUs, same user.
    warmer_pp = names.PKG_PYTHON_DIR
    if user_pp is not None and user_pp.get("value") and "valueFrom" not in user_pp:
        warmer_pp = f"{names.PKG_PYTHON_DIR}:{user_pp['value']}"
    warmer_env = [e for e in (serving.get("env") or [])
                  if e.get("name") not in (names.ENV_PYTHONPATH, SPEC_ENV, *names.SERVING_ENV)]
    warmer_env += cache_env + [
        {"name": names.ENV_PYTHONPATH, "value": warmer_pp},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": SPEC_ENV, "value": spec.warmer.to_json()},
    ]
    warmer_env = _dedupe_env(warmer_env)
    pkg_mount_ro = {"name": names.PKG_VOLUME, "mountPath": names.PKG_MOUNT, "readOnly": True}
    cache_mount = {"name": names.CACHE_VOLUME, "mountPath": mount}
    warmer: dict[str, Any] = {
        "name": names.WARMER_CONTAINER,
        "image": spec.container.image or serving.get("image"),
        "command": [spec.container.python, *WARMER_COMMAND_TAIL],
        "env": warmer_env,
        "volumeMounts": [*copy.deepcopy(serving.get("volumeMounts") or []), cache_mount, pkg_mount_ro],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pull = spec.container.image_pull_policy or (None if spec.container.image else serving.get("imagePullPolicy"))
    if pull:
        warmer["imagePullPolicy"] = pull
    for key in ("envFrom", "workingDir"):
        if serving.get(key):
            warmer[key] = copy.deepcopy(serving[key])
    warmer["securityContext"] = warmer_security_context(serving.get("securityContext"))
    resources = _merge_resources(serving, dict(spec.container.resources))
    if resources:
        warmer["resources"] = resources

    bootstrap = {
        "name": names.BOOTSTRAP_CONTAINER,
        "image": spec.container.bootstrap_image or default_bootstrap_image,
        "command": list(BOOTSTRAP_COMMAND),
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "volumeMounts": [{"name": names.PKG_VOLUME, "mountPath": names.PKG_MOUNT}],
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": copy.deepcopy(BOOTSTRAP_SECURITY_CONTEXT),
    }
    volumes = [
        {"name": names.PKG_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": names.CACHE_VOLUME, **copy.deepcopy(dict(spec.cache.source))},
    ]
    serving_patch = {
        "name": sname,
        "env": serving_env,
        "volumeMounts": [cache_mount, {**pkg_mount_ro}],
    }
    body = {"spec": {"initContainers": [bootstrap, warmer], "volumes": volumes, "containers": [serving_patch]}}
    h = digest({"cr": cr_name, "body": body})
    fragment = {
        "metadata": {"annotations": {names.ANN_HASH: h, names.ANN_INJECTED_BY: cr_name}},
        **body,
    }
    return Injection(fragment, h, sname, tuple(warnings))


def _dedupe_env(env: list[dict]) -> list[dict]:
    """Last one wins, order of first appearance kept (env is keyed by name)."""
    seen: dict[str, int] = {}
    out: list[dict] = []
    for e in env:
        if e["name"] in seen:
            out[seen[e["name"]]] = e
        else:
            seen[e["name"]] = len(out)
            out.append(e)
    return out


def removal_fragment(live_template: dict) -> dict:
    """What the operator applies to take its injection back out.

    Empty except where the operator took over a user's value (PYTHONPATH): that value is
    applied back as the user had it.
    """
    containers = []
    for c in ((live_template or {}).get("spec") or {}).get("containers") or []:
        e = _env_value(c, names.ENV_PYTHONPATH)
        if e and "value" in e and (e["value"] or "").startswith(names.PKG_SITE_DIR + ":"):
            containers.append({"name": c["name"], "env": [{"name": names.ENV_PYTHONPATH, "value": strip_site(e["value"])}]})
    return {"spec": {"containers": containers}} if containers else {}


def is_injected(template: dict) -> bool:
    return bool(((template or {}).get("metadata") or {}).get("annotations", {}).get(names.ANN_HASH))


def live_hash(template: dict) -> Optional[str]:
    return (((template or {}).get("metadata") or {}).get("annotations") or {}).get(names.ANN_HASH)


def live_owner(template: dict) -> Optional[str]:
    return (((template or {}).get("metadata") or {}).get("annotations") or {}).get(names.ANN_INJECTED_BY)


# --- a local model of server-side apply's merge for these lists (tests and the demo) ---

_KEYS = {"initContainers": "name", "volumes": "name", "containers": "name", "env": "name", "volumeMounts": "mountPath"}


def _merge(live: Any, frag: Any, key: Optional[str] = None) -> Any:
    if isinstance(frag, dict) and isinstance(live, dict):
        out = copy.deepcopy(live)
        for k, v in frag.items():
            out[k] = _merge(live.get(k), v, k)
        return out
    if isinstance(frag, list) and key in _KEYS and isinstance(live, list):
        mk = _KEYS[key]
        out = copy.deepcopy(live)
        index = {item.get(mk): i for i, item in enumerate(out)}
        for item in frag:
            if item.get(mk) in index:
                out[index[item[mk]]] = _merge(out[index[item[mk]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(frag)


def apply_fragment(template: dict, fragment: dict) -> dict:
    """``template`` with ``fragment`` merged in as server-side apply merges keyed lists."""
    return _merge(template or {}, fragment)
