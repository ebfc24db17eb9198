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
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.spec import SPEC_ENV, ServerSection, WarmerSpec
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
from warmup_operator.core.serving import serving_engine

WARMER_COMMAND_TAIL = ["-m", "kernel_warmer", "run", "--spec-env", SPEC_ENV]
DEFAULT_PYTHON = "python3"
BOOTSTRAP_COMMAND = ["python3", "-m", "kernel_warmer.bootstrap", "--dest", names.PKG_MOUNT]


@dataclass(frozen=True)
class Injection:
    fragment: dict  # the pod-template fragment to apply (annotations included)
    hash: str
    serving_container: str
    warnings: tuple[str, ...] = field(default=())
    # what the warmer plans for, per spec field, and where it came from (core/serving.py)
    engine: dict = field(default_factory=dict, compare=False)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def build_injection(spec: KernelWarmupSpec, user_template: dict, *, cr_name: str,
                    default_bootstrap_image: str = names.DEFAULT_BOOTSTRAP_IMAGE) -> Injection:
    """The fragment that injects ``spec`` into ``user_template`` (the user's own view):
    check reserved names, read the serving command, build each container's env, the two
    init containers, the volumes and the serving container's patch, then hash and annotate."""
    serving = pick_serving_container(user_template, spec.serving_container)
    mount = spec.cache.mount_path
    check_reserved(user_template, serving, mount)
    engine = serving_engine(spec, serving)
    env, warnings = serving_env(serving, cache_env(mount), spec.sitecustomize)
    warmer_spec = with_server(engine.warmer, spec.engine_warmup, serving, env)
    warmer = warmer_container(spec, serving, warmer_env(serving, warmer_spec.to_json()))
    body = {"spec": {
        "initContainers": [bootstrap_container(default_bootstrap_image), warmer],
        "volumes": pod_volumes(spec.cache.volume()),
        "containers": [serving_patch(serving["name"], env, mount)],
    }}
    fragment, h = annotate(body, cr_name)
    return Injection(fragment, h, serving["name"], tuple(warnings) + engine.warnings, engine.derived)


# --- the steps, each pure ---------------------------------------------------------------


def check_reserved(template: dict, serving: dict, mount: str) -> None:
    """Collisions with the user's own objects: never overwrite them."""
    tspec = (template or {}).get("spec") or {}
    for v in tspec.get("volumes") or []:
        if v.get("name") in names.VOLUMES:
            raise InjectionError("spec.cache", f"the workload already has a volume named {v['name']!r} (reserved)")
    for c in tspec.get("initContainers") or []:
        if c.get("name") in names.INIT_CONTAINERS:
            raise InjectionError("spec", f"the workload already has an init container named {c['name']!r} (reserved)")
    check_mounts(serving, mount)
    for e in serving.get("env") or []:
        if e.get("name") in names.OWN_ENV:
            raise InjectionError(f"containers[{serving['name']}].env[{e['name']}]",
                                 "is set by the operator (it points at the warm cache); remove it from the workload")


def check_mounts(serving: dict, mount: str) -> None:
    sname = serving["name"]
    for m in serving.get("volumeMounts") or []:
        p = norm_path(m.get("mountPath") or "")
        if p == norm_path(mount):
            raise InjectionError("spec.cache.mountPath",
                                 f"{mount} collides with volumeMount {m.get('name')!r} of container {sname!r}; choose another mountPath")
        inside, over = norm_path(mount).startswith(p.rstrip("/") + "/"), p.startswith(norm_path(mount) + "/")
        if inside or over:
            where = "inside" if inside else "over"
            raise InjectionError("spec.cache.mountPath",
                                 f"{mount} is {where} volumeMount {m.get('name')!r} ({m.get('mountPath')}) of container "
                                 f"{sname!r}: it would hide {'part of that volume' if inside else 'that volume'} from "
                                 "the server; choose a folder outside it")
        if p == names.PKG_MOUNT or p.startswith(names.PKG_MOUNT + "/"):
            raise InjectionError(f"containers[{sname}].volumeMounts",
                                 f"{m.get('mountPath')} is under {names.PKG_MOUNT}, reserved for the operator's package folder")


def cache_env(mount: str) -> list[dict]:
    """Where the serving process keeps each cache on the volume (``CacheLayout.SERVER_ENV``:
    Triton, FlashInfer's JIT and tactics, DeepGEMM, vLLM's own cache root, Inductor, CUDA's
    PTX cache). The warmer is not given them: it learns the cache from its spec."""
    return [{"name": k, "value": v} for k, v in CacheLayout.server_env_for(mount).items()]


def with_server(warmer: WarmerSpec, warmup: str, serving: dict, env: list[dict]) -> WarmerSpec:
    """The warmer spec with the serving container's own start (command, args as the Pod has
    them, the PYTHONPATH it gets) for the engine phase: copied, never the CR author's."""
    pythonpath = next((e["value"] for e in env if e["name"] == names.ENV_PYTHONPATH), literal_pythonpath(serving))
    server = ServerSection(warmup=warmup, command=list(serving.get("command") or []),
                           args=list(serving.get("args") or []), pythonpath=pythonpath)
    return dataclasses.replace(warmer, server=server)


def literal_pythonpath(container: dict) -> Optional[str]:
    """The container's PYTHONPATH if it is a literal value (None: unset or valueFrom)."""
    e = env_entry(container, names.ENV_PYTHONPATH)
    return e.get("value") or "" if e is not None and "value" in e and "valueFrom" not in e else None


def serving_env(serving: dict, cache: list[dict], sitecustomize: bool) -> tuple[list[dict], list[str]]:
    """The serving container's env entries: the cache, and the sitecustomize folder in
    front of its PYTHONPATH (a valueFrom PYTHONPATH cannot be prefixed: a warning)."""
    if not sitecustomize:
        return list(cache), []
    user = env_entry(serving, names.ENV_PYTHONPATH)
    literal = literal_pythonpath(serving)
    if user is not None and literal is None:
        return list(cache), [f"container {serving['name']!r} takes PYTHONPATH from valueFrom, which cannot be prefixed: "
                             "the FlashInfer tactics will not be loaded by the server (set a literal PYTHONPATH)"]
    value = f"{names.PKG_SITE_DIR}:{literal}" if literal else names.PKG_SITE_DIR
    return [*cache, {"name": names.ENV_PYTHONPATH, "value": value}], []


def warmer_env(serving: dict, spec_json: str) -> list[dict]:
    """The warmer sees what the server sees (TRITON_* vars are in Triton's cache key), plus
    the warmer package on PYTHONPATH and its spec (the cache's folders come from the spec)."""
    literal = literal_pythonpath(serving)
    pythonpath = f"{names.PKG_PYTHON_DIR}:{literal}" if literal else names.PKG_PYTHON_DIR
    own = (names.ENV_PYTHONPATH, SPEC_ENV, *names.OWN_ENV)
    env = [e for e in (serving.get("env") or []) if e.get("name") not in own]
    return dedupe_by_name([*env,
                           {"name": names.ENV_PYTHONPATH, "value": pythonpath},
                           {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                           {"name": SPEC_ENV, "value": spec_json}])


def pkg_mount(read_only: bool) -> dict:
    m = {"name": names.PKG_VOLUME, "mountPath": names.PKG_MOUNT}
    return {**m, "readOnly": True} if read_only else m


def warmer_python(chosen: Optional[str], serving: dict) -> str:
    """The interpreter the warmer runs: the CR's (already checked against the install-time
    list, core/trust.py), else the serving container's own when its command starts with a
    Python (the workload owner's choice, in their own image), else python3 on the image's PATH."""
    if chosen:
        return chosen
    first = str((serving.get("command") or [""])[0])
    if names.PYTHON_NAME_RE.match(first.rsplit("/", 1)[-1]) and (first.startswith("/") or "/" not in first):
        return first
    return DEFAULT_PYTHON


def warmer_container(spec: KernelWarmupSpec, serving: dict, env: list[dict]) -> dict:
    """The warmer runs in the serving image (unless the CR names one) with the serving
    container's mounts, GPUs, env sources and user, never its privileges."""
    c = spec.container
    warmer: dict[str, Any] = {
        "name": names.WARMER_CONTAINER,
        "image": c.image or serving.get("image"),
        "command": [warmer_python(c.python, serving), *WARMER_COMMAND_TAIL],
        "env": env,
        "volumeMounts": [*copy.deepcopy(serving.get("volumeMounts") or []),
                         {"name": names.CACHE_VOLUME, "mountPath": spec.cache.mount_path}, pkg_mount(True)],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pull = c.image_pull_policy or (None if c.image else serving.get("imagePullPolicy"))
    if pull:
        warmer["imagePullPolicy"] = pull
    for key in ("envFrom", "workingDir"):
        if serving.get(key):
            warmer[key] = copy.deepcopy(serving[key])
    warmer["securityContext"] = warmer_security_context(serving.get("securityContext"))
    resources = merge_resources(serving, dict(c.resources))
    if resources:
        warmer["resources"] = resources
    return warmer


def bootstrap_container(image: str) -> dict:
    """Copies the warmer package and the sitecustomize into the shared emptyDir."""
    return {
        "name": names.BOOTSTRAP_CONTAINER,
        "image": image,
        "command": list(BOOTSTRAP_COMMAND),
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "volumeMounts": [pkg_mount(False)],
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": copy.deepcopy(BOOTSTRAP_SECURITY_CONTEXT),
    }


def pod_volumes(cache_source: Any) -> list[dict]:
    return [
        {"name": names.PKG_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": names.CACHE_VOLUME, **copy.deepcopy(dict(cache_source))},
    ]


def serving_patch(name: str, env: list[dict], mount: str) -> dict:
    return {"name": name, "env": env,
            "volumeMounts": [{"name": names.CACHE_VOLUME, "mountPath": mount}, pkg_mount(True)]}


def annotate(body: dict, cr_name: str) -> tuple[dict, str]:
    """The fragment with the hash of what is injected (and by which CR) as annotations."""
    h = digest({"cr": cr_name, "body": body})
    return {"metadata": {"annotations": {names.ANN_HASH: h, names.ANN_INJECTED_BY: cr_name}}, **body}, h
