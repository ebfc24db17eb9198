"""Sharded FlashInfer tuning: the planned work as items, and each rank's share (pure).

One *unit* is one (op, shape, variant): a GEMM backend or the fused MoE, tuned over all
its M buckets in one call, as rank 0 tunes it (``choose_one`` profiles every bucket of
FlashInfer's hybrid table up to m_max). By default one work item is one unit, which
balances the plans measured (docs/BENCHMARKS.md, issue 15) and builds each shape's cuDNN
graph on one rank only. (A cuDNN unit's cost does add up bucket by bucket, 1.1-2.6 s a
bucket at M <= 64 on H100; an early reading of one rank's first call, which carries
cuDNN's once-per-process cost, as "one bucket costs what seven do" was wrong.)

Only when the plan has fewer units than ranks, and only for a unit whose cost is known to
grow bucket by bucket with no per-call part (``TuneCost.additive``: the fused MoE), is a
unit cut into contiguous M-bucket ranges, the heaviest first, halving, until there is an
item per rank or nothing left to cut. FlashInfer 0.6.18 tunes a range apart from the others: inside
``autotune(tuning_buckets=range)`` ``choose_one`` profiles exactly those buckets, and each
entry's file key holds its bucket, which the override's mapper and the op's default mapper
both map to itself, so the entries are the ones a server looks up (autotuner.py:
``_apply_tuning_overrides``, ``_generate_optimization_profiles``, ``_find_nearest_profile``).

Items are dealt to ranks by longest-processing-time first (heaviest item to the least
loaded rank, ties to the lower rank; items ordered by cost, then by their key), so every
rank computes the same split from the same plan, and the most loaded rank carries at most
the average load plus one item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from kernel_warmer.plan.flashinfer import MOE_OP, AutoTuneOp


@dataclass(frozen=True)
class TuneCost:
    """Seconds to tune one unit: ``per_call_s`` once per ``choose_one`` call whatever its
    buckets, plus ``per_bucket_s`` for each bucket profiled. ``additive``: measured to cost
    bucket by bucket (no per-call part), so a unit may be cut into bucket ranges."""

    per_call_s: float
    per_bucket_s: float = 0.0
    additive: bool = False

    def seconds(self, buckets: int) -> float:
        return round(self.per_call_s + self.per_bucket_s * buckets, 6)


MOE_VARIANT = "moe"

# Measured on one host with 4x NVIDIA H100 80GB HBM3 (2 GPUs used), 2026-11-27, while the
# host's CPUs were partly busy with an nvcc build (docs/BENCHMARKS.md, issue 15; M <= 64,
# 7 buckets). Only their ratio matters to the split; the absolute times carry the CPU
# contention of that run.
TUNE_COSTS: dict[tuple[str, str], TuneCost] = {
    # Llama-3-8B bf16 TP 2: rank0's longest unit, all 7 buckets in one call, 10.6 s
    # (n=4096 k=2048). Kept whole: single buckets took 1.1-2.6 s each (so the cost adds up
    # bucket by bucket), but a cut rebuilds the shape's cuDNN graph on another rank and the
    # whole units already balance the measured plans. Not counted here: cuDNN's
    # once-per-process cost (~11 s on H100) in a process's first call, paid by every rank.
    ("bf16_gemm", "cudnn"): TuneCost(per_call_s=10.6),
    # timed apart later (2x H100, fresh processes, 2026-11-27): 0.1-0.3 s a unit at
    # M <= 64 and at M <= 512, where a cuDNN unit took 7.5-12 s and 17-19 s
    ("bf16_gemm", "cublaslt"): TuneCost(per_call_s=0.2),
    # Qwen3-30B-A3B bf16 TP 2, --moe-backend flashinfer_cutlass, one bucket per call:
    # 0.8-1.0 s each (gemm1 + gemm2), 7 buckets in 3.7 s wall on 2 GPUs: the time is spent
    # bucket by bucket, so the unit is taken as additive (inferred: a 7-bucket call was not
    # timed, the rank0 and every-rank MoE modes were not measured). Flat in M at M <= 64;
    # larger buckets were not measured.
    (MOE_OP, MOE_VARIANT): TuneCost(per_call_s=0.0, per_bucket_s=0.9, additive=True),
}
# fp8/fp4 GEMMs and other backends: not measured; one call of 1 s, never cut.
DEFAULT_COST = TuneCost(per_call_s=1.0)

# FlashInfer's hybrid bucket phases (flashinfer/fused_moe/utils.py).
_PHASE1_END, _PHASE2_STEP, _PHASE2_END, _PHASE3_STEP, _PHASE3_END = 256, 256, 2048, 512, 4096


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
    """One (op, variant) tuned over ``buckets`` in one call; ``op_index`` is the op's
    place in the plan. ``whole``: every bucket of the op, tuned as rank 0 tunes it."""

    op_index: int
    op: AutoTuneOp
    variant: str  # the GEMM backend, or "moe"
    buckets: tuple[int, ...]
    cost: float

    @property
    def whole(self) -> bool:
        return self.buckets == hybrid_buckets(self.op.m_max)

    def sort_key(self) -> tuple:
        return (self.op.op, self.op.n, self.op.k, self.op.mode, self.variant, self.buckets)

    def m_label(self) -> str:
        return f"M<={self.op.m_max}" if self.whole else "M=" + ",".join(map(str, self.buckets))

    def label(self) -> str:
        return f"{self.op.op} n={self.op.n} k={self.op.k} {self.variant} {self.m_label()}"

    def to_dict(self) -> dict:
        return {"op_index": self.op_index, "op": self.op.to_dict(), "variant": self.variant,
                "buckets": list(self.buckets), "cost": self.cost}

    @classmethod
    def from_dict(cls, d: Mapping) -> "WorkItem":
        return cls(int(d["op_index"]), AutoTuneOp(**d["op"]), str(d["variant"]),
                   tuple(int(b) for b in d["buckets"]), float(d["cost"]))


def cost_of(op: str, variant: str, costs: Mapping[tuple[str, str], TuneCost] = TUNE_COSTS) -> TuneCost:
    return costs.get((op, variant), DEFAULT_COST)


def variants_of(op: AutoTuneOp, backends: Mapping[str, Iterable[str]]) -> tuple[str, ...]:
    """The fused MoE is tuned once for every rank key; a GEMM once per backend."""
    if op.op == MOE_OP:
        return (MOE_VARIANT,)
    return tuple(backends.get(op.op, ()))


def units(ops: list[AutoTuneOp], backends: Mapping[str, Iterable[str]],
          costs: Mapping[tuple[str, str], TuneCost] = TUNE_COSTS) -> list[WorkItem]:
    """One item per (op, variant) of the plan, over all its buckets, plan order."""
    out = []
    for i, op in enumerate(ops):
        buckets = hybrid_buckets(op.m_max)
        for variant in variants_of(op, backends):
            out.append(WorkItem(i, op, variant, buckets, cost_of(op.op, variant, costs).seconds(len(buckets))))
    return out


def halve(item: WorkItem, costs: Mapping[tuple[str, str], TuneCost] = TUNE_COSTS) -> tuple[WorkItem, WorkItem]:
    """Two contiguous bucket ranges, the lower one the smaller when the count is odd."""
    cut = len(item.buckets) // 2
    if cut == 0:
        raise ValueError(f"{item.label()}: one bucket cannot be halved")
    cost = cost_of(item.op.op, item.variant, costs)
    lo, hi = item.buckets[:cut], item.buckets[cut:]
    return (WorkItem(item.op_index, item.op, item.variant, lo, cost.seconds(len(lo))),
            WorkItem(item.op_index, item.op, item.variant, hi, cost.seconds(len(hi))))


def _cuttable(item: WorkItem, costs: Mapping[tuple[str, str], TuneCost]) -> bool:
    return cost_of(item.op.op, item.variant, costs).additive and len(item.buckets) > 1


def work_items(ops: list[AutoTuneOp], backends: Mapping[str, Iterable[str]], world_size: int = 1,
               costs: Mapping[tuple[str, str], TuneCost] = TUNE_COSTS) -> list[WorkItem]:
    """The plan's units; while there are fewer items than ranks, the heaviest additive
    item (ties by key) is halved into two bucket ranges. Plan order, ranges in M order."""
    items = units(ops, backends, costs)
    while len(items) < world_size:
        cuttable = [it for it in items if _cuttable(it, costs)]
        if not cuttable:
            break
        heaviest = min(cuttable, key=lambda it: (-it.cost, it.sort_key()))
        at = items.index(heaviest)
        items[at:at + 1] = halve(heaviest, costs)
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
