"""The tactic file: fused-MoE entries for every rank of the world, and the world the file
covers (stdlib only), in the key format of the installed FlashInfer.

FlashInfer's ``AutoTuner.save_configs`` writes a JSON object (autotuner/autotuner.py):

    "_metadata":   environment fields a loader must match
    "_records":    {namespace: {...}} product-owned records, loaded back untouched
    "<file key>":  [runner class name, tactic], one per tuned (op, runner, bucket, extras)
    "_generation": sha256 of the object without it (json.dumps sort_keys, "," ":")

A file key is ``str((custom_op, runner_class_name, nearest_profile, extras))``
(``ProfilingCacheKey.file_key``), whose extras, for the fused MoE, come from
``MoERunner.get_cache_key_extras``. Up to FlashInfer 0.7.1 they hold the tp/ep *ranks*, so
rank 0's tuning is no hit for rank 1: the warmer copies every entry under every rank's key
(``copy_to_ranks``). From 0.7.2 the ranks are gone and one entry serves every rank.
``kernel_warmer.versions`` holds both formats (``MoeKeyFormat``); every function here that
reads the world from a key takes the format. Dtypes print as ``torch.bfloat16``, which is
not a literal, so a key is parsed with ``ast`` and the rank integers are replaced in place
by their source offsets: every other character stays as FlashInfer wrote it.

Every rank of a TP/EP world calls the fused MoE with the same tensor shapes (its local
experts and per-rank width), so the tactics tuned for one rank are the tactics for all.
The coverage record goes into ``_records`` under ``kernel_warmup``, inside the same file,
so it is written atomically with the entries.
"""

from __future__ import annotations

import ast
import hashlib
import json
from typing import Any, Iterable, Optional

from kernel_warmer.versions import MoeKeyFormat

METADATA_KEY, RECORDS_KEY, GENERATION_KEY = "_metadata", "_records", "_generation"
NAMESPACE = "kernel_warmup"
MOE_CUSTOM_OPS = ("trtllm::fused_moe::gemm1", "trtllm::fused_moe::gemm2")

RankKey = tuple[int, int]  # (tp_rank, ep_rank)
# (tp_size, tp_rank, ep_size, ep_rank); the ranks are None in a format without them
World = tuple[int, Optional[int], int, Optional[int]]


class TacticFileError(ValueError):
    """The tactic file is not in the format this module knows (names what differs)."""


def _int_at(node: ast.expr) -> Optional[int]:
    return node.value if isinstance(node, ast.Constant) and type(node.value) is int else None


def _moe_key(key: str) -> Optional[list[ast.expr]]:
    """The extras nodes of a fused-MoE file key, else None (any other key)."""
    try:
        tree = ast.parse(key, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.Tuple) or len(tree.elts) != 4:
        return None
    op, extras = tree.elts[0], tree.elts[3]
    if not (isinstance(op, ast.Constant) and op.value in MOE_CUSTOM_OPS and isinstance(extras, ast.Tuple)):
        return None
    return extras.elts


def _positions(fmt: MoeKeyFormat) -> tuple[int, ...]:
    return tuple(p for p in (fmt.tp_size, fmt.tp_rank, fmt.ep_size, fmt.ep_rank) if p is not None)


def moe_extras(key: str, fmt: MoeKeyFormat) -> Optional[list[ast.expr]]:
    """The extras of a fused-MoE file key checked against ``fmt``, else None (not MoE)."""
    extras = _moe_key(key)
    if extras is None:
        return None
    if len(extras) != fmt.length or any(_int_at(extras[i]) is None for i in _positions(fmt)):
        raise TacticFileError(f"fused-MoE key {key[:160]}... has {len(extras)} extras, not the {fmt.length} of "
                              f"FlashInfer's {fmt.name} with integer tp/ep fields at {_positions(fmt)}: "
                              "the installed FlashInfer writes another key layout; add its row to "
                              "kernel_warmer/versions.py")
    return extras


def rank_of(key: str, fmt: MoeKeyFormat) -> Optional[World]:
    """(tp_size, tp_rank, ep_size, ep_rank) of a fused-MoE key (ranks None where ``fmt``
    has none), else None."""
    e = moe_extras(key, fmt)
    if e is None:
        return None
    at = lambda i: None if i is None else _int_at(e[i])  # noqa: E731
    return at(fmt.tp_size), at(fmt.tp_rank), at(fmt.ep_size), at(fmt.ep_rank)  # type: ignore[return-value]


def rekey(key: str, tp_rank: int, ep_rank: int, fmt: MoeKeyFormat) -> str:
    """``key`` with its tp_rank and ep_rank replaced, every other character kept (a format
    without ranks: the key itself, which every rank looks up)."""
    extras = moe_extras(key, fmt)
    if extras is None:
        raise TacticFileError(f"not a fused-MoE key: {key[:120]}")
    if not fmt.per_rank:
        return key
    out = key
    for node, value in sorted(((extras[fmt.tp_rank], tp_rank), (extras[fmt.ep_rank], ep_rank)),
                              key=lambda nv: nv[0].col_offset, reverse=True):
        out = out[:node.col_offset] + str(value) + out[node.end_col_offset:]
    return out


def copy_to_ranks(entries: dict[str, Any], tp_size: int, ep_size: int, source: RankKey,
                  targets: Iterable[RankKey], fmt: MoeKeyFormat) -> int:
    """Add, for every fused-MoE entry of ``source`` in this world, the same entry under each
    target rank's key. Returns how many entries were added (0 where one key serves all)."""
    if not fmt.per_rank:
        return 0
    added = 0
    for key, value in list(entries.items()):
        if key.startswith("_") or rank_of(key, fmt) != (tp_size, source[0], ep_size, source[1]):
            continue
        for tp_rank, ep_rank in targets:
            if (tp_rank, ep_rank) != tuple(source):
                entries[rekey(key, tp_rank, ep_rank, fmt)] = value
                added += 1
    return added


def generation(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != GENERATION_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def ordered(doc: dict[str, Any]) -> dict[str, Any]:
    """FlashInfer's own order (metadata, records, sorted entries) and a fresh generation."""
    out = {k: doc[k] for k in (METADATA_KEY, RECORDS_KEY) if k in doc}
    out.update((k, doc[k]) for k in sorted(doc) if not k.startswith("_"))
    out[GENERATION_KEY] = generation(out)
    return out


def with_coverage(doc: dict[str, Any], coverage: dict[str, Any]) -> dict[str, Any]:
    records = dict(doc.get(RECORDS_KEY) or {})
    records[NAMESPACE] = {"coverage": coverage}
    return ordered({**doc, RECORDS_KEY: records})


def coverage_of(doc: dict[str, Any]) -> Optional[dict[str, Any]]:
    return ((doc.get(RECORDS_KEY) or {}).get(NAMESPACE) or {}).get("coverage")


def has_moe_entries(doc: dict[str, Any]) -> bool:
    return any(not k.startswith("_") and _moe_key(k) is not None for k in doc)


def missing_moe_keys(doc: dict[str, Any], tp_size: int, ep_size: int, ranks: Iterable[RankKey],
                     fmt: MoeKeyFormat) -> list[RankKey]:
    """Ranks of this world that would find no fused-MoE entry in ``doc`` (a partial file)."""
    worlds = [r for r in (rank_of(k, fmt) for k in doc if not k.startswith("_"))
              if r is not None and (r[0], r[2]) == (tp_size, ep_size)]
    if not fmt.per_rank:
        return [] if worlds else [tuple(r) for r in ranks]  # type: ignore[misc]
    present = {(r[1], r[3]) for r in worlds}
    return [tuple(r) for r in ranks if tuple(r) not in present]  # type: ignore[misc]


def merge(docs: list[dict[str, Any]], ranks: Optional[list[int]] = None) -> dict[str, Any]:
    """One file from the ranks' shard files (rank order): rank 0's metadata, every
    namespaced record, the union of the entries, in FlashInfer's order with a fresh
    generation, so the bytes depend on the entries, never on which rank tuned which.
    An entry two shards hold with different tactics keeps the lowest rank's; a shard
    from another environment (its metadata differs from rank 0's) is an error naming it."""
    ranks = list(range(len(docs))) if ranks is None else ranks
    meta = next((d[METADATA_KEY] for d in docs if d.get(METADATA_KEY) is not None), None)
    out: dict[str, Any] = {METADATA_KEY: meta} if meta is not None else {}
    records: dict[str, Any] = {}
    for rank, doc in zip(ranks, docs):
        if doc.get(METADATA_KEY) is not None and doc[METADATA_KEY] != meta:
            raise TacticFileError(f"rank {rank}'s tactics were tuned in another environment "
                                  f"({doc[METADATA_KEY]} != {meta})")
        for ns, rec in (doc.get(RECORDS_KEY) or {}).items():
            records.setdefault(ns, rec)
        for key, value in doc.items():
            if not key.startswith("_"):
                out.setdefault(key, value)
    if records:
        out[RECORDS_KEY] = records
    return ordered(out)


def conflicts(docs: list[dict[str, Any]]) -> int:
    """Entries that two shards hold with different tactics (0 when the split is disjoint)."""
    seen: dict[str, str] = {}
    n = 0
    for doc in docs:
        for key, value in doc.items():
            if key.startswith("_"):
                continue
            text = json.dumps(value, sort_keys=True)
            if seen.setdefault(key, text) != text:
                n += 1
    return n
