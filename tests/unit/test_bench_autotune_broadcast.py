"""bench/bench_autotune_broadcast.py --dry-run: no GPU, no FlashInfer; the plan, the items,
their cost estimates and each rank's share (so the GPU script cannot rot unnoticed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_autotune_broadcast.py"


def dry_run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "initcontainer")}
    return subprocess.run([sys.executable, str(BENCH), "--dry-run", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_dry_run_of_the_moe_plan_prints_items_costs_and_every_ranks_share():
    proc = dry_run("--model", "moe", "--worlds", "2,4")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "world 2: Qwen3-30B-A3B bf16 -tp 2 --moe-backend flashinfer_cutlass" in out
    assert "world 4:" in out and "rank 3:" in out
    # one (op, shape) and more ranks: the additive MoE is cut into bucket ranges, one per rank
    assert "cutlass_fused_moe n=768 k=2048 moe M=8,16,32,64  est 3.6 s" in out  # tp 2: 2 x 768 / 2
    assert "cutlass_fused_moe n=768 k=2048 moe M=1,2,4  est 2.7 s" in out
    assert "cutlass_fused_moe n=384 k=2048 moe M=1  est 0.9 s" in out  # tp 4
    assert "estimated load per rank [1.8, 1.8, 1.8, 0.9]" in out


def test_dry_run_of_the_bf16_plan_tunes_each_shape_and_backend_in_one_call():
    proc = dry_run("--model", "llama-bf16", "--worlds", "2")
    assert proc.returncode == 0, proc.stderr
    assert "bf16_gemm n=3072 k=4096 cudnn M<=64  est 10.6 s" in proc.stdout
    assert " M=" not in proc.stdout  # no GEMM is cut by bucket
    assert "estimated load per rank [21.6, 21.6]" in proc.stdout


@pytest.mark.parametrize("model,items", [("moe", {"2": 2, "4": 4}), ("llama-bf16", {"2": 8, "4": 8})])
def test_dry_run_json_splits_every_item_once(model, items):
    proc = dry_run("--model", model, "--worlds", "2,4", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    for world in ("2", "4"):
        p = plan[world]
        assert len(p["items"]) == items[world]
        assert sorted(b for it in p["items"] for b in it["buckets"]) == sorted([1, 2, 4, 8, 16, 32, 64] * (
            1 if model == "moe" else 8))  # every bucket of every unit, once
        assert len(p["shares"]) == int(world)
        assert sorted(x for s in p["shares"] for x in s) == sorted(it["label"] for it in p["items"])
        assert abs(sum(p["loads"]) - p["total_cost"]) < 1e-3
    assert "torch" not in proc.stderr
