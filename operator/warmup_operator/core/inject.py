"""Injection as pure functions over pod templates (plain dicts, as the API returns them).

``uninject.user_view(template)`` strips whatever the operator added earlier, giving the
user's own template back; ``build_injection(spec, user_template, ...)`` returns the
*fragment* the operator server-side-applies (only its own list entries, keyed as the API
keys them: initContainers and volumes by name, volumeMounts by mountPath, env by name) and
the hash that goes into the template's annotation. The API server does the merge; the
tests model it in ``tests/support/ssa.py``.

PYTHONPATH: the serving container's PYTHONPATH gets the sitecustomize folder in front.
If the user sets PYTHONPATH to a literal value V, the operator takes over that one value
as ``<site>:V`` and removal applies ``V`` back (the template returns to the user's value;
the operator's field manager keeps owning it, so a user's *server-side* apply of a new
PYTHONPATH needs --force-conflicts). A PYTHONPATH from valueFrom cannot be prefixed: the
sitecustomize is then skipped with a warning."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.spec import SPEC_ENV
from warmup_operator.core import names
from warmup_operator.core.containers import (
    BOOTSTRAP_SECURITY_CONTEXT,
    InjectionError,
    env_entry,
    merge_resources,
    norm_path,
    pick_serving_container,
    warmer_security_context,
)
from warmup_operator.core.dicts import dedupe_by_name
from warmup_operator.core.kernelwarmup import KernelWarmupSpec

WARMER_COMMAND_TAIL = ["-m", "kernel_warmer", "run", "--spec-env", SPEC_ENV]
BOOTSTRAP_COMMAND = ["python3", "-m", "kernel_warmer.bootstrap", "--dest", names.PKG_MOUNT]


@dataclass(frozen=True)
class Injection:
    fragment: dict  # the pod-template fragment to apply (annotations included)
    hash: str
    serving_container: str
    warnings: tuple[str, ...] = field(default=())


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

    triton_dir = CacheLayout.sub_path(mount, CacheLayout.TRITON)
    fi_dir = CacheLayout.sub_path(mount, CacheLayout.FLASHINFER)
    cache_env = [
        {"name": names.ENV_TRITON_CACHE, "value": triton_dir},
        {"name": names.ENV_FLASHINFER_DIR, "value": fi_dir},
        {"name": names.ENV_CACHE_ROOT, "value": mount},
    ]

    user_pp = env_entry(serving, names.ENV_PYTHONPATH)
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
    warmer_env = dedupe_by_name(warmer_env)
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
    resources = merge_resources(serving, dict(spec.container.resources))
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
