"""Taking the injection back out: the user's own view of a template, and the removal fragment (pure)."""

from __future__ import annotations

import copy
from typing import Any, Optional

from warmup_operator.core import names
from warmup_operator.core.containers import env_entry
from warmup_operator.core.dicts import get_path
from warmup_operator.core.trust import TrustError


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
    _drop_keys(meta, "annotations", (names.ANN_HASH, names.ANN_INJECTED_BY))
    spec = t.setdefault("spec", {})
    _drop_named(spec, "initContainers", "name", names.INIT_CONTAINERS)
    _drop_named(spec, "volumes", "name", names.VOLUMES)
    for c in spec.get("containers") or []:
        _drop_named(c, "volumeMounts", "name", names.VOLUMES)
        if "env" in c and ours:
            c["env"] = [e for e in map(_user_env, c["env"]) if e is not None]
            if not c["env"]:
                del c["env"]
    return t


def _drop_keys(obj: dict, field: str, keys: tuple[str, ...]) -> None:
    """Remove ``keys`` from the map ``obj[field]``, and the field when it ends up empty."""
    if obj.get(field):
        for k in keys:
            obj[field].pop(k, None)
        if not obj[field]:
            del obj[field]


def _drop_named(obj: dict, field: str, key: str, ours: tuple[str, ...]) -> None:
    """Remove our entries (by ``key``) from the list ``obj[field]``, and the field when empty."""
    if field in obj:
        obj[field] = [item for item in obj[field] if item.get(key) not in ours]
        if not obj[field]:
            del obj[field]


def _user_env(e: dict) -> Optional[dict]:
    """An env entry as the user wrote it: ours dropped, the site folder taken off PYTHONPATH."""
    if e.get("name") in names.OWN_ENV:
        return None
    if e.get("name") == names.ENV_PYTHONPATH and "value" in e:
        rest = strip_site(e.get("value") or "")
        return {**e, "value": rest} if rest else None
    return e


def removal_fragment(live_template: dict) -> dict:
    """What the operator applies to take its injection back out.

    Empty except where the operator took over a user's value (PYTHONPATH): that value is
    applied back as the user had it.
    """
    containers = []
    for c in ((live_template or {}).get("spec") or {}).get("containers") or []:
        e = env_entry(c, names.ENV_PYTHONPATH)
        if e and "value" in e and (e["value"] or "").startswith(names.PKG_SITE_DIR + ":"):
            containers.append({"name": c["name"], "env": [{"name": names.ENV_PYTHONPATH, "value": strip_site(e["value"])}]})
    return {"spec": {"containers": containers}} if containers else {}


def live_hash(template: dict) -> Optional[str]:
    return get_path(template or {}, ("metadata", "annotations", names.ANN_HASH))


def live_owner(template: dict) -> Optional[str]:
    return get_path(template or {}, ("metadata", "annotations", names.ANN_INJECTED_BY))


def _names(template: dict, key: str) -> set:
    return {x.get("name") for x in ((template or {}).get("spec") or {}).get(key) or []}


def check_reserved_names(template: dict) -> None:
    """A template the operator has not injected must not already use its names: the
    user's entry would be taken over (overwritten by the apply, removed on deletion).
    ``user_view`` strips those names, so this looks at the live template."""
    if live_hash(template):
        return
    for key, reserved in (("initContainers", names.INIT_CONTAINERS), ("volumes", names.VOLUMES)):
        taken = sorted(_names(template, key) & set(reserved))
        if taken:
            raise TrustError(f"spec.template.spec.{key}[{taken[0]}]",
                             f"the workload already has {key[:-1]} {taken[0]!r}, a name reserved for what the "
                             "operator injects; rename it in the workload", "ReservedName")


def injected_parts_present(template: dict) -> bool:
    """Whether the init containers and volumes the operator injects are in the template."""
    return (set(names.INIT_CONTAINERS) <= _names(template, "initContainers")
            and set(names.VOLUMES) <= _names(template, "volumes"))


def injected_parts(template: dict) -> dict:
    """Everything of the operator's in a live template, as a fragment (the inverse of
    ``user_view``): applying it changes no value, it only makes the operator's field
    manager own what the webhook wrote (fields a webhook adds belong to no manager)."""
    meta_ann = ((template or {}).get("metadata") or {}).get("annotations") or {}
    spec = (template or {}).get("spec") or {}
    ours = {k: v for k, v in meta_ann.items() if k in (names.ANN_HASH, names.ANN_INJECTED_BY)}
    out: dict[str, Any] = {"metadata": {"annotations": ours}} if ours else {}
    body: dict[str, Any] = {}
    init = [c for c in spec.get("initContainers") or [] if c.get("name") in names.INIT_CONTAINERS]
    vols = [v for v in spec.get("volumes") or [] if v.get("name") in names.VOLUMES]
    containers = [c for c in (_container_parts(c, bool(ours)) for c in spec.get("containers") or []) if c]
    for key, items in (("initContainers", init), ("volumes", vols), ("containers", containers)):
        if items:
            body[key] = copy.deepcopy(items)
    if body:
        out["spec"] = body
    return out


def _container_parts(c: dict, prefixed_pythonpath_is_ours: bool) -> Optional[dict]:
    env = [e for e in c.get("env") or [] if e.get("name") in names.OWN_ENV
           or (prefixed_pythonpath_is_ours and e.get("name") == names.ENV_PYTHONPATH
               and str(e.get("value") or "").split(":")[0] == names.PKG_SITE_DIR)]
    mounts = [m for m in c.get("volumeMounts") or [] if m.get("name") in names.VOLUMES]
    if not env and not mounts:
        return None
    part: dict[str, Any] = {"name": c.get("name")}
    if env:
        part["env"] = env
    if mounts:
        part["volumeMounts"] = mounts
    return part
