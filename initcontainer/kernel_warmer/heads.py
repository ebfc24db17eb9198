"""The one tensor-parallel split of attention heads (part of the warmer's contract: the spec checks
explicit layers with it, the Triton and FlashInfer plans split with it).

vLLM's rule: query heads must divide evenly over the ranks; KV heads are divided, or
replicated (one per rank) when the tensor-parallel size exceeds their count, which then
must be a multiple of it. Each caller names the fields its own input calls these (the
config.json or layer fields for the Triton plan, ``tensorParallelSize`` for FlashInfer's)
and the error class its callers catch.
"""

from __future__ import annotations

from dataclasses import dataclass

from kernel_warmer.errors import FieldError


@dataclass(frozen=True)
class SplitFields:
    """Where an uneven split is reported: the fields to change and the error to raise."""

    heads: str
    kv_heads: str
    error: type[FieldError] = FieldError


def per_rank_heads(num_heads: int, num_kv_heads: int, tp: int, fields: SplitFields) -> tuple[int, int]:
    """(query heads, KV heads) on one rank."""
    if num_heads % tp:
        raise fields.error(fields.heads, f"{num_heads} attention heads are not divisible by tensor-parallel size {tp} "
                                         f"(vLLM's -tp/--tensor-parallel-size, or spec.tensorParallelSize); "
                                         f"pick a tensor-parallel size that divides {num_heads}")
    return num_heads // tp, kv_heads_per_rank(num_kv_heads, tp, fields)


def kv_heads_per_rank(num_kv_heads: int, tp: int, fields: SplitFields) -> int:
    if tp >= num_kv_heads:
        if tp % num_kv_heads:
            raise fields.error(fields.kv_heads,
                               f"tensor-parallel size {tp} is not a multiple of the model's {num_kv_heads} KV heads, "
                               "so they cannot be replicated evenly; choose one that divides or is a multiple of it")
        return 1
    if num_kv_heads % tp:
        raise fields.error(fields.kv_heads, f"{num_kv_heads} KV heads are not divisible by tensor-parallel size {tp}")
    return num_kv_heads // tp
