"""The sharded-tuning split (pure): FlashInfer's buckets, the items, each rank's share."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kernel_warmer.flashinfer import tactics
from kernel_warmer.plan.flashinfer import AutoTuneOp, plan_every_op, plan_ops
from kernel_warmer.plan.model import load_arch
from kernel_warmer.plan.shard import (
    DEFAULT_COST, MOE_VARIANT, WorkItem, choose_mode, cost_of, halve, hybrid_buckets, share_loads, split, units,
    work_items)
from kernel_warmer.spec import EngineSection

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
BACKENDS = {"bf16_gemm": ("cudnn", "cublaslt")}


@pytest.mark.parametrize("m,expected", [
    (1, (1,)), (64, (1, 2, 4, 8, 16, 32, 64)), (100, (1, 2, 4, 8, 16, 32, 64, 100)),
    (512, (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)),
    (3000, (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2560, 3000)),
    (8192, (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584,
            4096, 8192)),
])
def test_hybrid_buckets_match_flashinfers_table(m, expected):
    assert hybrid_buckets(m) == expected


def llama_items(tp=2, tokens=64, world=2):
    arch = load_arch(json.loads((CONFIGS / "llama3-8b.json").read_text()))
    ops, _ = plan_every_op(arch, tp, tokens, "none", 90)
    return ops, work_items(ops, BACKENDS, world)


def qwen_moe_ops(tp=2, tokens=64):
    arch = load_arch(json.loads((CONFIGS / "qwen3-30b-a3b.json").read_text()))
    ops, _ = plan_ops(arch, tp, tokens, "auto", 90, EngineSection(moe_backend="flashinfer_cutlass"))
    return ops


def covered(items):
    """Every (op, variant, bucket) the items profile, with repeats."""
    return sorted((it.op_index, it.variant, b) for it in items for b in it.buckets)


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_one_item_per_op_shape_and_backend_over_all_its_buckets(world):
    """The GPU run (issue 15): cuDNN pays per call, so a GEMM unit is never cut, and with
    8 units for at most 8 ranks nothing is cut at all."""
    ops, items = llama_items(world=world)
    assert len(ops) == 4 and len(items) == 4 * 2
    assert all(it.whole and it.buckets == hybrid_buckets(64) for it in items)
    assert {(it.op_index, it.variant) for it in items} == {(i, b) for i in range(4) for b in ("cudnn", "cublaslt")}
    assert covered(items) == sorted((i, b, m) for i in range(4) for b in ("cudnn", "cublaslt")
                                    for m in hybrid_buckets(64))
    assert items[0].label() == "bf16_gemm n=3072 k=4096 cudnn M<=64"


def test_the_cost_weights_follow_the_measured_kind():
    cudnn, cublaslt, moe = (cost_of("bf16_gemm", "cudnn"), cost_of("bf16_gemm", "cublaslt"),
                            cost_of("cutlass_fused_moe", MOE_VARIANT))
    # cuDNN: one bucket alone (13.3 s) cost about what seven in one call did (10.6 s)
    assert cudnn.seconds(1) == cudnn.seconds(7) == 10.6 and not cudnn.additive
    assert cublaslt.seconds(7) < cudnn.seconds(7) / 10 and not cublaslt.additive
    # the fused MoE: ~0.9 s a bucket, nothing per call, so a cut costs no extra work
    assert moe.additive and moe.seconds(1) == 0.9 and moe.seconds(7) == pytest.approx(6.3)
    assert cost_of("fp8_gemm", "cublas") == DEFAULT_COST and not DEFAULT_COST.additive


def test_gemm_units_are_not_cut_even_when_ranks_outnumber_them():
    ops, _ = llama_items()
    items = work_items(ops[:1], BACKENDS, world_size=8)  # 2 units, 8 ranks
    assert [(it.variant, it.whole) for it in items] == [("cudnn", True), ("cublaslt", True)]
    shares = split(items, 8)
    assert sum(1 for s in shares if s) == 2


@pytest.mark.parametrize("world,ranges", [
    (1, [(1, 2, 4, 8, 16, 32, 64)]),
    (2, [(1, 2, 4), (8, 16, 32, 64)]),
    (3, [(1, 2, 4), (8, 16), (32, 64)]),
    (4, [(1,), (2, 4), (8, 16), (32, 64)]),
    (7, [(1,), (2,), (4,), (8,), (16,), (32,), (64,)]),
    (8, [(1,), (2,), (4,), (8,), (16,), (32,), (64,)]),  # one bucket cannot be cut further
])
def test_the_moe_alone_is_cut_into_one_bucket_range_per_rank(world, ranges):
    ops = qwen_moe_ops()
    assert [o.op for o in ops] == ["cutlass_fused_moe"]
    items = work_items(ops, BACKENDS, world)
    assert [it.buckets for it in items] == ranges
    assert covered(items) == [(0, MOE_VARIANT, m) for m in hybrid_buckets(64)]  # complete, no repeats
    # additive: the cut adds no work
    assert sum(it.cost for it in items) == pytest.approx(cost_of("cutlass_fused_moe", MOE_VARIANT).seconds(7))
    assert items == work_items(ops, BACKENDS, world)  # deterministic
    if world > 1:
        assert items[0].label() == f"cutlass_fused_moe n=768 k=2048 moe M={','.join(map(str, ranges[0]))}"
    loads = share_loads(split(items, world))
    assert max(loads) == pytest.approx(0.9 * max(len(r) for r in ranges))


def test_only_the_additive_unit_is_cut_next_to_a_gemm():
    moe = qwen_moe_ops()[0]
    gemm = AutoTuneOp("bf16_gemm", 4096, 2048, 64, "o")
    items = work_items([gemm, moe], BACKENDS, world_size=4)  # 3 units, 4 ranks
    assert [(it.variant, it.buckets) for it in items] == [
        ("cudnn", hybrid_buckets(64)), ("cublaslt", hybrid_buckets(64)),
        (MOE_VARIANT, (1, 2, 4)), (MOE_VARIANT, (8, 16, 32, 64))]
    with pytest.raises(ValueError, match="one bucket"):
        halve(WorkItem(0, moe, MOE_VARIANT, (8,), 0.9))


def random_plan(rng: random.Random) -> list[AutoTuneOp]:
    ops: dict[tuple, AutoTuneOp] = {}
    for i in range(rng.randint(0, 6)):
        m = rng.choice([1, 16, 64, 512, 3000])
        op = (AutoTuneOp("cutlass_fused_moe", rng.choice([768, 1536]), 2048, m, f"e{i}", mode="bf16",
                         local_experts=64) if rng.random() < 0.4 else
              AutoTuneOp(rng.choice(["bf16_gemm", "fp8_gemm"]), rng.choice([1024, 4096, 6144]),
                         rng.choice([4096, 14336]), m, f"l{i}"))
        ops.setdefault((op.op, op.n, op.k, op.m_max), op)
    return list(ops.values())


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_items_of_any_plan_cover_every_bucket_once_and_cut_only_to_fill_the_ranks(seed, world):
    rng = random.Random(seed)
    ops = random_plan(rng)
    backends = {"bf16_gemm": ("cudnn", "cublaslt"), "fp8_gemm": ("cublas",)}
    whole = units(ops, backends)
    items = work_items(ops, backends, world)
    assert covered(items) == covered(whole)
    for it in items:
        assert it.whole or cost_of(it.op.op, it.variant).additive  # only additive units are cut
        full = hybrid_buckets(it.op.m_max)
        start = full.index(it.buckets[0])
        assert it.buckets == full[start:start + len(it.buckets)]  # a contiguous range
    if len(whole) >= world:
        assert items == whole
    else:
        cuttable = sum(len(it.buckets) - 1 for it in whole if cost_of(it.op.op, it.variant).additive)
        assert len(items) == min(world, len(whole) + cuttable)


def random_items(rng: random.Random, n: int) -> list[WorkItem]:
    """Up to n items, unique by (op, shape, variant, buckets) as a plan's are."""
    out: dict[tuple, WorkItem] = {}
    for i in range(n):
        op = AutoTuneOp("bf16_gemm", rng.choice([1024, 4096, 6144]), rng.choice([4096, 14336]), 512, f"l{i}")
        full = hybrid_buckets(512)
        start = rng.randrange(len(full))
        it = WorkItem(i, op, rng.choice(["cudnn", "cublaslt"]), full[start:start + rng.randint(1, 3)],
                      round(rng.choice([0.5, 0.9, 10.6, rng.uniform(0.05, 13.0)]), 3))  # ties too
        out.setdefault(it.sort_key(), it)
    return list(out.values())


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_split_is_complete_disjoint_deterministic_and_balanced(seed, world):
    rng = random.Random(seed)
    items = random_items(rng, rng.randint(0, 60))
    shares = split(items, world)
    assert len(shares) == world
    flat = [id(it) for s in shares for it in s]
    assert sorted(flat) == sorted(id(it) for it in items)  # complete, each item once
    # deterministic: the same plan in any order gives every rank the same share
    shuffled = items[:]
    rng.shuffle(shuffled)
    again = split(shuffled, world)
    assert [sorted(it.sort_key() for it in s) for s in shares] == [sorted(it.sort_key() for it in s) for s in again]
    # balanced: no rank carries more than the average plus the heaviest item (LPT's bound)
    loads = share_loads(shares)
    if items:
        avg, heaviest = sum(it.cost for it in items) / world, max(it.cost for it in items)
        assert max(loads) <= avg + heaviest + 1e-6
        assert max(loads) - min(loads) <= heaviest + 1e-6
    # each share keeps the plan order
    for s in shares:
        assert [items.index(it) for it in s] == sorted(items.index(it) for it in s)


def test_split_of_equal_items_differs_by_at_most_one_item():
    _, items = llama_items()
    cudnn = [it for it in items if it.variant == "cudnn"]
    for world in (2, 3, 4):
        sizes = sorted(len(s) for s in split(cudnn, world))
        assert sizes[-1] - sizes[0] <= 1, (world, sizes)


def test_the_measured_llama_plan_puts_two_cudnn_units_on_each_of_two_ranks():
    """The GPU run's plan (Llama-3-8B TP 2, M <= 64): the four cuDNN units, the heavy ones,
    go two to a rank, and the cuBLASLt units fill in; nothing is tuned twice."""
    _, items = llama_items(world=2)
    shares = split(items, 2)
    assert [sum(it.variant == "cudnn" for it in s) for s in shares] == [2, 2]
    assert share_loads(shares) == [21.6, 21.6]


def test_more_ranks_than_items_leaves_some_shares_empty():
    _, items = llama_items()
    shares = split(items[:3], 8)
    assert sum(1 for s in shares if s) == 3 and sum(len(s) for s in shares) == 3


def test_split_rejects_an_empty_world():
    with pytest.raises(ValueError, match="world_size"):
        split([], 0)


@pytest.mark.parametrize("requested,gpus,mode,warns", [
    ("sharded", ["NVIDIA H100 80GB HBM3"] * 4, "sharded", False),
    ("sharded", ["NVIDIA H100 80GB HBM3", "NVIDIA H200"], "rank0", True),
    ("rank0", ["NVIDIA H100 80GB HBM3", "NVIDIA H200"], "rank0", False),
    ("rank0", ["NVIDIA H200"] * 2, "rank0", False),
    ("sharded", ["NVIDIA H200"], "sharded", False),
])
def test_different_gpu_models_fall_back_to_rank0_with_a_warning(requested, gpus, mode, warns):
    got, warning = choose_mode(requested, gpus)
    assert got == mode and bool(warning) == warns
    if warns:
        assert "NVIDIA H200: rank(s) [1]" in warning and "rank0" in warning


def entry(op: str, m: int, tactic: int) -> tuple[str, list]:
    return str((op, "CudnnRunner", ((m, 4096), (4096, 1024)), ())), ["CudnnRunner", tactic]


def test_merge_bytes_do_not_depend_on_who_tuned_what():
    meta = {"gpu": "NVIDIA H200", "flashinfer_version": "0.6.18"}
    entries = dict(entry("bf16_gemm", m, m % 5) for m in (1, 2, 4, 8, 16))
    keys = sorted(entries)

    def docs(assign):
        out = [{"_metadata": meta} for _ in range(3)]
        for k, r in zip(keys, assign):
            out[r][k] = entries[k]
        return out

    a = json.dumps(tactics.merge(docs([0, 1, 2, 0, 1])), indent=2)
    b = json.dumps(tactics.merge(docs([2, 2, 2, 1, 0])), indent=2)
    assert a == b
    merged = json.loads(a)
    assert [k for k in merged if not k.startswith("_")] == keys
    assert merged["_generation"] == tactics.generation(merged)
    assert tactics.conflicts(docs([0, 1, 2, 0, 1])) == 0


def test_merge_names_a_shard_from_another_environment():
    docs = [{"_metadata": {"gpu": "NVIDIA H200"}}, {"_metadata": {"gpu": "NVIDIA H100"}}]
    with pytest.raises(tactics.TacticFileError, match="rank 1"):
        tactics.merge(docs)


def test_merge_keeps_the_lowest_ranks_tactic_on_a_conflict():
    k, v = entry("bf16_gemm", 8, 1)
    docs = [{k: v}, {k: ["CudnnRunner", 9]}]
    assert tactics.merge(docs)[k] == v and tactics.conflicts(docs) == 1
