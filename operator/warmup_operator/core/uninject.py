"""Taking the injection back out: the user's own view of a template, and the removal fragment (pure)."""

from __future__ import annotations

import copy
from typing import Optional

from warmup_operator.core import names
from warmup_operator.core.containers import env_entry
from warmup_operator.core.dicts import get_path


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
