"""Dict-path and keyed-list helpers over plain API objects (pure)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional


def get_path(obj: Mapping[str, Any], path: Iterable[str]) -> Optional[Any]:
    cur: Any = obj
    for p in path:
        if not isinstance(cur, Mapping) or p not in cur:
            return None
        cur = cur[p]
    return cur


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


def dedupe_by_name(env: list[dict]) -> list[dict]:
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
