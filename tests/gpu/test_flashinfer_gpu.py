"""FlashInfer autotune on real GPUs (skipped without CUDA + flashinfer). Runs the bench
scripts, which log to $OUT, and asserts on their results."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() or importlib.util.find_spec("flashinfer") is None:
    pytest.skip("needs CUDA and flashinfer", allow_module_level=True)

BENCH = Path(__file__).resolve().parents[2] / "bench"
MAX_TOKENS = os.environ.get("KW_GPU_MAX_TOKENS", "512")


def run_bench(name: str) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / name), "--max-tokens", MAX_TOKENS, "--json"],
                          capture_output=True, text=True, timeout=1500)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_warm_fresh_process_hits_every_shape_under_5_percent():
    r = run_bench("bench_autotune.py")
    assert r["all_hits"], r
    assert r["loaded"], r  # the sitecustomize found and loaded the file
    assert r["warm_over_cold"] < 0.05, r


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_rank0_broadcast_gives_every_rank_identical_bytes():
    r = run_bench("bench_autotune_broadcast.py")
    assert r["a_identical"], r
    assert r["a_tune_gpu_s"] < r["b_tune_gpu_s"], r  # one rank tuned instead of all
