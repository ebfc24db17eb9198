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
    assert out.count("cutlass_fused_moe n=768 k=2048 moe M=64  est") == 1  # tp 2: 2 x 768 / 2
    assert "cutlass_fused_moe n=384 k=2048 moe M=1  est" in out  # tp 4


@pytest.mark.parametrize("model,items", [("moe", 7), ("llama-bf16", 56)])
def test_dry_run_json_splits_every_item_once(model, items):
    proc = dry_run("--model", model, "--worlds", "2,4", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    for world in ("2", "4"):
        p = plan[world]
        assert len(p["items"]) == items
        assert len(p["shares"]) == int(world)
        assert sorted(x for s in p["shares"] for x in s) == sorted(it["label"] for it in p["items"])
        assert abs(sum(p["loads"]) - p["total_cost"]) < 1e-3
    assert "torch" not in proc.stderr
