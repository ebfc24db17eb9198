"""A local model of server-side apply's merge for the keyed lists the operator injects (tests only)."""

from __future__ import annotations

import copy
from typing import Any, Optional

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
