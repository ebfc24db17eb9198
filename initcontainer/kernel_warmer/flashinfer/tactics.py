"""The tactic file: one rank's fused-MoE entries copied under every rank's key, and the
world the file covers (stdlib only; FlashInfer 0.6.18's on-disk format).

FlashInfer's ``AutoTuner.save_configs`` writes a JSON object (autotuner/autotuner.py):

    "_metadata":   environment fields a loader must match
    "_records":    {namespace: {...}} product-owned records, loaded back untouched
    "<file key>":  [runner class name, tactic], one per tuned (op, runner, bucket, extras)
    "_generation": sha256 of the object without it (json.dumps sort_keys, "," ":")

A file key is ``str((custom_op, runner_class_name, nearest_profile, extras))``
(``ProfilingCacheKey.file_key``): the repr of a tuple whose extras, for the fused MoE,
come from ``MoERunner.get_cache_key_extras`` (fused_moe/core.py:707-736):
``(x_dtype, weight_dtype, output_dtype, top_k, tp_size, tp_rank, ep_size, ep_rank, ...)``.
Dtypes print as ``torch.bfloat16``, which is not a literal, so a key is parsed with
``ast`` and the two rank integers are replaced in place by their source offsets: every
other character of the key stays as FlashInfer wrote it.

Every rank of a TP/EP world calls the fused MoE with the same tensor shapes (its local
experts and per-rank width), so the tactics tuned for one (tp_rank, ep_rank) are the
tactics for all; only the key differs. The coverage record goes into ``_records`` under
``kernel_warmup``, inside the same file, so it is written atomically with the entries.
"""

from __future__ import annotations

import ast
import hashlib
import json
from typing import Any, Iterable, Optional

METADATA_KEY, RECORDS_KEY, GENERATION_KEY = "_metadata", "_records", "_generation"
NAMESPACE = "kernel_warmup"
MOE_CUSTOM_OPS = ("trtllm::fused_moe::gemm1", "trtllm::fused_moe::gemm2")
# Positions in MoERunner.get_cache_key_extras (FlashInfer 0.6.18).
TP_SIZE, TP_RANK, EP_SIZE, EP_RANK = 4, 5, 6, 7

RankKey = tuple[int, int]  # (tp_rank, ep_rank)


class TacticFileError(ValueError):
    """The tactic file is not in the format this module knows (names what differs)."""


def _int_at(node: ast.expr) -> Optional[int]:
    return node.value if isinstance(node, ast.Constant) and type(node.value) is int else None


def moe_extras(key: str) -> Optional[tuple[list[ast.expr], str]]:
    """(extras nodes, custom op) of a fused-MoE file key, else None."""
    try:
        tree = ast.parse(key, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.Tuple) or len(tree.elts) != 4:
        return None
    op, extras = tree.elts[0], tree.elts[3]
    if not (isinstance(op, ast.Constant) and op.value in MOE_CUSTOM_OPS and isinstance(extras, ast.Tuple)):
        return None
    if len(extras.elts) <= EP_RANK or any(_int_at(extras.elts[i]) is None for i in (TP_SIZE, TP_RANK, EP_SIZE, EP_RANK)):
        raise TacticFileError(f"fused-MoE key {key[:120]}... has no integer tp/ep size and rank at extras "
                              f"{TP_SIZE}-{EP_RANK}: FlashInfer's key layout changed; update tactics.py")
    return extras.elts, op.value


def rank_of(key: str) -> Optional[tuple[int, int, int, int]]:
    """(tp_size, tp_rank, ep_size, ep_rank) of a fused-MoE key, else None."""
    found = moe_extras(key)
    if found is None:
        return None
    e = found[0]
    return _int_at(e[TP_SIZE]), _int_at(e[TP_RANK]), _int_at(e[EP_SIZE]), _int_at(e[EP_RANK])  # type: ignore[return-value]


def rekey(key: str, tp_rank: int, ep_rank: int) -> str:
    """``key`` with its tp_rank and ep_rank replaced, every other character kept."""
    found = moe_extras(key)
    if found is None:
        raise TacticFileError(f"not a fused-MoE key: {key[:120]}")
    extras = found[0]
    out = key
    for node, value in sorted(((extras[TP_RANK], tp_rank), (extras[EP_RANK], ep_rank)),
                              key=lambda nv: nv[0].col_offset, reverse=True):
        out = out[:node.col_offset] + str(value) + out[node.end_col_offset:]
    return out


def copy_to_ranks(entries: dict[str, Any], tp_size: int, ep_size: int, source: RankKey,
                  targets: Iterable[RankKey]) -> int:
    """Add, for every fused-MoE entry of ``source`` in this world, the same entry under each
    target rank's key. Returns how many entries were added."""
    added = 0
    for key, value in list(entries.items()):
        if key.startswith("_") or rank_of(key) != (tp_size, source[0], ep_size, source[1]):
            continue
        for tp_rank, ep_rank in targets:
            if (tp_rank, ep_rank) != tuple(source):
                entries[rekey(key, tp_rank, ep_rank)] = value
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
    return any(not k.startswith("_") and moe_extras(k) is not None for k in doc)


def missing_moe_keys(doc: dict[str, Any], tp_size: int, ep_size: int, ranks: Iterable[RankKey]) -> list[RankKey]:
    """Ranks of this world that have no fused-MoE entry in ``doc`` (a partial file)."""
    present = {(r[1], r[3]) for r in (rank_of(k) for k in doc if not k.startswith("_"))
               if r is not None and (r[0], r[2]) == (tp_size, ep_size)}
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
