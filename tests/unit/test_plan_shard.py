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
    MOE_VARIANT, WorkItem, choose_mode, hybrid_buckets, item_cost, share_loads, split, work_items)
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


def llama_items(tp=2, tokens=64):
    arch = load_arch(json.loads((CONFIGS / "llama3-8b.json").read_text()))
    ops, _ = plan_every_op(arch, tp, tokens, "none", 90)
    return ops, work_items(ops, BACKENDS)


def test_items_cover_every_op_backend_and_bucket_once():
    ops, items = llama_items()
    assert len(ops) == 4 and len(items) == 4 * 2 * 7
    keys = {(it.op_index, it.variant, it.bucket) for it in items}
    assert len(keys) == len(items)
    assert keys == {(i, b, m) for i in range(4) for b in ("cudnn", "cublaslt") for m in hybrid_buckets(64)}
    # the measured weights: a cuDNN bucket costs more than a cuBLASLt one, bigger M costs more
    assert item_cost("bf16_gemm", "cudnn", 64) > item_cost("bf16_gemm", "cublaslt", 64)
    assert item_cost("bf16_gemm", "cudnn", 4096) > item_cost("bf16_gemm", "cudnn", 1)


def test_the_moe_plan_for_qwen3_on_hopper_is_one_item_per_bucket():
    arch = load_arch(json.loads((CONFIGS / "qwen3-30b-a3b.json").read_text()))
    ops, _ = plan_ops(arch, 2, 64, "auto", 90, EngineSection(moe_backend="flashinfer_cutlass"))
    items = work_items(ops, BACKENDS)
    assert [(it.op.op, it.variant) for it in items] == [("cutlass_fused_moe", MOE_VARIANT)] * 7
    assert [it.bucket for it in items] == [1, 2, 4, 8, 16, 32, 64]


def random_items(rng: random.Random, n: int) -> list[WorkItem]:
    """Up to n items, unique by (op, shape, variant, bucket) as a plan's are."""
    out: dict[tuple, WorkItem] = {}
    for i in range(n):
        op = AutoTuneOp("bf16_gemm", rng.choice([1024, 4096, 6144]), rng.choice([4096, 14336]), 512, f"l{i}")
        it = WorkItem(i, op, rng.choice(["cudnn", "cublaslt"]), rng.choice(hybrid_buckets(512)),
                      round(rng.choice([0.3, 1.0, 2.0, rng.uniform(0.05, 5.0)]), 3))  # ties too
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
    # each share keeps the plan order (one op's buckets run together)
    for s in shares:
        assert [items.index(it) for it in s] == sorted(items.index(it) for it in s)


def test_split_of_equal_items_differs_by_at_most_one_item():
    _, items = llama_items()
    cudnn = [it for it in items if it.variant == "cudnn" and it.op_index == 0]
    for world in (2, 3, 4):
        sizes = sorted(len(s) for s in split(cudnn, world))
        assert sizes[-1] - sizes[0] <= 1, (world, sizes)


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
