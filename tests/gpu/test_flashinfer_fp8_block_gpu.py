"""FP8 block-scale dense layers on one Hopper GPU: the server compiles nothing FlashInfer
compiles on first use (issue 12, "the same for an FP8 dense config on one GPU").

Qwen3-8B-FP8 (128x128 block-scaled weights, tests/fixtures/configs/qwen3-8b-fp8.json)
served with ``vllm serve Qwen/Qwen3-8B-FP8``: on SM90 vLLM 0.33 runs its dense layers
through FlashInferFp8DeepGEMMDynamicBlockScaledKernel, which calls
``flashinfer.gemm.fp8_blockscale_gemm_sm90`` for M < 32 (nothing is autotuned). That call
builds FlashInfer's ``fp8_blockscale_gemm_90`` module and compiles a DeepGEMM kernel with
nvcc per shape and block config into ``$TRTLLM_DG_CACHE_DIR``.

One cold warmer run with the env the operator injects, then a fresh server-like process
with the same env calling the op at every planned (N, K) and M = 1 .. 31 the way vLLM
calls it (scaled_mm/flashinfer.py:198-209: bf16 input, fp8 weight, fp32 block scales,
out_dtype bf16): no file appears or changes in the JIT folders and no nvcc/cicc/ptxas runs;
then ``check`` says warm. The figures go to $KW_FI_FP8_OUT (default a temp folder).
Needs the FlashInfer wheels importable, nvcc and ninja on PATH, and an SM90 GPU.

    KW_FI_FP8_OUT=/tmp/kw-fi-fp8 python3 -m pytest tests/gpu/test_flashinfer_fp8_block_gpu.py -v -s
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() or importlib.util.find_spec("flashinfer") is None:
    pytest.skip("needs CUDA and flashinfer", allow_module_level=True)
if torch.cuda.get_device_capability(0) != (9, 0):
    pytest.skip("FlashInfer's fp8_blockscale_gemm_sm90 runs on SM90 only", allow_module_level=True)

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "initcontainer"))
from bench_flashinfer_moe import JIT_IGNORED, CompilerWatch  # noqa: E402

from kernel_warmer.cache.volume import CacheLayout  # noqa: E402
from kernel_warmer.plan.flashinfer import plan_jit_calls  # noqa: E402
from kernel_warmer.plan.model import load_arch  # noqa: E402

CONFIG = ROOT / "tests" / "fixtures" / "configs" / "qwen3-8b-fp8.json"
SERVE = "vllm serve Qwen/Qwen3-8B-FP8"

PROBE = r"""
import json, sys, time, torch
from flashinfer.gemm import fp8_blockscale_gemm_sm90
calls = json.loads(sys.argv[1])
dev = torch.device("cuda", 0)
torch.ones(1, device=dev)
start = time.monotonic(); first = None
for c in calls:
    w = (torch.randn(c["n"], c["k"], device=dev) * 0.02).to(torch.float8_e4m3fn)
    s = torch.ones(-(-c["n"] // 128), c["k"] // 128, device=dev, dtype=torch.float32)
    for m in c["m_values"]:
        x = torch.randn(m, c["k"], device=dev, dtype=torch.bfloat16)
        out = fp8_blockscale_gemm_sm90(input=x, weight=w, weight_scale=s, out_dtype=torch.bfloat16)
        torch.cuda.synchronize()
        if first is None: first = time.monotonic() - start
        assert out.shape == (m, c["n"]) and out.dtype == torch.bfloat16
print(json.dumps({"seconds": round(time.monotonic() - start, 4), "first_call_s": round(first, 4),
                  "calls": sum(len(c["m_values"]) for c in calls)}))
"""


def env_for(layout: CacheLayout) -> dict[str, str]:
    """What the operator injects into the warmer and the serving container."""
    env = dict(os.environ)
    env.update(FLASHINFER_WORKSPACE_BASE=str(layout.flashinfer_jit_dir), TRTLLM_DG_CACHE_DIR=str(layout.deepgemm_dir))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "initcontainer"), env.get("PYTHONPATH")) if p)
    return env


def jit_state(layout: CacheLayout) -> dict[str, tuple[int, int]]:
    root = layout.flashinfer_jit_dir
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in (root.rglob("*") if root.is_dir() else []) if p.is_file() and not p.name.endswith(JIT_IGNORED)}


def warmer(cmd: str, layout: CacheLayout, out: Path) -> tuple[float, subprocess.CompletedProcess]:
    argv = [sys.executable, "-m", "kernel_warmer", cmd, "--model-config", str(CONFIG), "--serve-command", SERVE,
            "--cache-dir", str(layout.root)]
    if cmd == "run":
        argv += ["--timeout-seconds", "3000", "--termination-log", str(out / "termination-log")]
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env_for(layout), capture_output=True, text=True, timeout=3300)
    (out / f"{cmd}.log").write_text(proc.stderr)
    return time.monotonic() - t0, proc


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


@pytest.fixture(scope="module")
def out() -> Path:
    folder = Path(os.environ.get("KW_FI_FP8_OUT") or tempfile.mkdtemp(prefix="kw-fi-fp8-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def run(out: Path) -> dict:
    layout = CacheLayout(out / "cache")
    calls, _ = plan_jit_calls(load_arch(json.loads(CONFIG.read_text())), 1, "auto", 90)
    cold_s, cold = warmer("run", layout, out)
    before = jit_state(layout)
    with CompilerWatch() as watch:
        t0 = time.monotonic()
        probe = subprocess.run([sys.executable, "-c", PROBE, json.dumps([c.to_dict() for c in calls])],
                               env=env_for(layout), capture_output=True, text=True, timeout=900)
        probe_wall = time.monotonic() - t0
    after = jit_state(layout)
    check_s, check = warmer("check", layout, out)
    doc = {"card": torch.cuda.get_device_name(0), "cold_s": round(cold_s, 3), "cold_rc": cold.returncode,
           "summary": last_json(cold.stdout), "probe": {**last_json(probe.stdout), "rc": probe.returncode,
                                                         "wall_s": round(probe_wall, 3),
                                                         "stderr_tail": probe.stderr[-2000:]},
           "compilers_seen": sorted(watch.seen), "jit_new": sorted(set(after) - set(before)),
           "jit_changed": sorted(p for p in set(after) & set(before) if after[p] != before[p]),
           "check": {"seconds": round(check_s, 3), "rc": check.returncode, "stdout": check.stdout.strip()[-300:]},
           "planned_calls": [c.to_dict() for c in calls]}
    fi = doc["summary"].get("flashinfer") or {}
    doc["fi"] = {k: fi.get(k) for k in ("status", "jit", "jit_seconds", "skipped_ops")}
    (out / "fp8-block.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: v for k, v in doc.items() if k != "planned_calls"}, indent=1)[:5000])
    return doc


def test_the_cold_run_builds_the_module_and_the_kernels_on_the_volume(run: dict):
    assert run["cold_rc"] == 0, run["summary"]
    jit = run["fi"]["jit"] or {}
    assert run["fi"]["status"] == "ok", run["fi"]
    assert "fp8_blockscale_gemm_90" in (jit.get("modules_built") or []) or jit.get("prebuilt"), jit
    assert jit.get("kernels_compiled", 0) > 0, jit


def test_the_server_compiles_nothing(run: dict):
    probe = run["probe"]
    assert probe["rc"] == 0, probe["stderr_tail"]
    assert probe["calls"] == 4 * 31
    assert run["jit_new"] == [] and run["jit_changed"] == [], run
    assert run["compilers_seen"] == [], run


def test_check_says_warm(run: dict):
    assert run["check"]["rc"] == 0 and run["check"]["stdout"].startswith("warm"), run["check"]
