"""Sharded FlashInfer tuning: the planned work as items, and each rank's share (pure).

One *work item* is one (op, shape, variant, M bucket): a GEMM backend or the fused MoE,
profiled at one bucket of FlashInfer's hybrid M buckets. FlashInfer 0.6.18 allows tuning
one bucket apart from the others: inside ``autotune(tuning_buckets=(b,))`` ``choose_one``
profiles only bucket ``b``, and the entry's file key holds the nearest profile, which the
override's mapper and the op's default mapper both map to ``b``, so the entry is the one a
server looks up for M in that bucket (autotuner.py: ``_generate_optimization_profiles``,
``_find_nearest_profile``, ``ProfilingCacheKey.file_key``).

Items are dealt to ranks by longest-processing-time first (heaviest item to the least
loaded rank, ties to the lower rank; items ordered by cost, then by their key), so every
rank computes the same split from the same plan, and the most loaded rank carries at most
the average load plus one item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from kernel_warmer.plan.flashinfer import MOE_OP, AutoTuneOp

# Seconds to tune one M bucket of one (shape, variant), by op and variant (backend).
# Sources (docs/BENCHMARKS.md, FlashInfer autotune, 2x/1x H200):
# - bf16 cuDNN: "the cuDNN backend dominates (11-26 s per shape)" for up to 8 buckets
#   (M <= 128): ~2 s a bucket;
# - bf16 cuBLASLt: Llama-3-8B TP 1, M <= 128, 4 shapes x 2 backends took 62.1 s, of which
#   cuDNN ~4 x 13 s; the remaining ~10 s over 32 buckets: ~0.3 s a bucket;
# - fused MoE: not measured yet (issue 12's cold run stopped in the JIT build); assumed
#   3 s a bucket for gemm1 + gemm2 together, to be replaced by bench_autotune_broadcast.py's
#   per-item times;
# - fp8/fp4 GEMMs and other backends: not measured; 1 s a bucket.
COST_PER_BUCKET_S: dict[tuple[str, str], float] = {
    ("bf16_gemm", "cudnn"): 2.0,
    ("bf16_gemm", "cublaslt"): 0.3,
    (MOE_OP, "moe"): 3.0,
}
DEFAULT_COST_S = 1.0
# Profiling one bucket grows mildly with M (bigger inputs per timed run): a guess, 1 + M/4096.
M_SCALE = 4096

# FlashInfer's hybrid bucket phases (flashinfer/fused_moe/utils.py).
_PHASE1_END, _PHASE2_STEP, _PHASE2_END, _PHASE3_STEP, _PHASE3_END = 256, 256, 2048, 512, 4096

MOE_VARIANT = "moe"


def hybrid_buckets(max_num_tokens: int) -> tuple[int, ...]:
    """``get_hybrid_num_tokens_buckets(max_num_tokens)`` of FlashInfer 0.6.18: the M values
    ``choose_one`` profiles for an op tuned at M = max_num_tokens (GEMMs and the fused MoE)."""
    if max_num_tokens < 1:
        raise ValueError(f"max_num_tokens must be >= 1, got {max_num_tokens}")
    out: list[int] = []
    m = 1
    while m <= min(max_num_tokens, _PHASE1_END):
        out.append(m)
        m *= 2
    for start, step, end in ((_PHASE1_END + _PHASE2_STEP, _PHASE2_STEP, _PHASE2_END),
                             (_PHASE2_END + _PHASE3_STEP, _PHASE3_STEP, _PHASE3_END)):
        m = start
        while m <= min(max_num_tokens, end):
            out.append(m)
            m += step
    m = _PHASE3_END * 2
    while m <= max_num_tokens:
        out.append(m)
        m *= 2
    if not out or out[-1] != max_num_tokens:
        out.append(max_num_tokens)
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class WorkItem:
    """One (op, variant, M bucket) to profile; ``op_index`` is the op's place in the plan."""

    op_index: int
    op: AutoTuneOp
    variant: str  # the GEMM backend, or "moe"
    bucket: int
    cost: float

    def sort_key(self) -> tuple:
        return (self.op.op, self.op.n, self.op.k, self.op.mode, self.variant, self.bucket)

    def label(self) -> str:
        return f"{self.op.op} n={self.op.n} k={self.op.k} {self.variant} M={self.bucket}"

    def to_dict(self) -> dict:
        return {"op_index": self.op_index, "op": self.op.to_dict(), "variant": self.variant,
                "bucket": self.bucket, "cost": self.cost}

    @classmethod
    def from_dict(cls, d: Mapping) -> "WorkItem":
        return cls(int(d["op_index"]), AutoTuneOp(**d["op"]), str(d["variant"]), int(d["bucket"]), float(d["cost"]))


def item_cost(op: str, variant: str, bucket: int, weights: Mapping[tuple[str, str], float] = COST_PER_BUCKET_S) -> float:
    return round(weights.get((op, variant), DEFAULT_COST_S) * (1.0 + bucket / M_SCALE), 6)


def variants_of(op: AutoTuneOp, backends: Mapping[str, Iterable[str]]) -> tuple[str, ...]:
    """The fused MoE is tuned once for every rank key; a GEMM once per backend."""
    if op.op == MOE_OP:
        return (MOE_VARIANT,)
    return tuple(backends.get(op.op, ()))


def work_items(ops: list[AutoTuneOp], backends: Mapping[str, Iterable[str]],
               weights: Mapping[tuple[str, str], float] = COST_PER_BUCKET_S) -> list[WorkItem]:
    """Every (op, variant, bucket) of the plan, plan order."""
    items = []
    for i, op in enumerate(ops):
        for variant in variants_of(op, backends):
            for b in hybrid_buckets(op.m_max):
                items.append(WorkItem(i, op, variant, b, item_cost(op.op, variant, b, weights)))
    return items


def split(items: list[WorkItem], world_size: int) -> list[list[WorkItem]]:
    """Each rank's share (LPT, deterministic); every share in the items' plan order."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    loads = [0.0] * world_size
    shares: list[list[WorkItem]] = [[] for _ in range(world_size)]
    for item in sorted(items, key=lambda it: (-it.cost, it.sort_key())):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shares[rank].append(item)
        loads[rank] += item.cost
    order = {id(it): n for n, it in enumerate(items)}
    return [sorted(s, key=lambda it: order[id(it)]) for s in shares]


def share_loads(shares: list[list[WorkItem]]) -> list[float]:
    return [round(sum(it.cost for it in s), 6) for s in shares]


def choose_mode(requested: str, gpus: list[str]) -> tuple[str, str | None]:
    """(mode, warning): sharded tuning needs one GPU model on every rank, since a tactic
    timed on one model need not suit another; otherwise rank 0 tunes for all."""
    if requested != "sharded" or len(set(gpus)) <= 1:
        return requested, None
    by_model: dict[str, list[int]] = {}
    for rank, gpu in enumerate(gpus):
        by_model.setdefault(gpu, []).append(rank)
    models = "; ".join(f"{g}: rank(s) {r}" for g, r in sorted(by_model.items()))
    return "rank0", (f"flashinfer.tuning=sharded needs one GPU model on every rank, found {models}: "
                     "rank 0 tunes everything instead (rank0 mode)")
