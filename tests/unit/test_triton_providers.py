"""vLLM's own prefill kernel (from vLLM's PyPI wheel, tests/support/vllm_kernel.py),
compiled with no GPU through vLLM's own launcher: one cache entry per call-site
specialization, the launcher's GPU-dependent choices made for the target, and a second run
warm. The GPU harness (tests/gpu/test_vllm_fidelity.py) proves a server then hits them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")
import vllm_kernel  # tests/support, on sys.path via tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
PLAN = {"layers": [{"numHeads": 4, "numKvHeads": 4, "headSize": 64},
                   {"numHeads": 4, "numKvHeads": 4, "headSize": 64, "slidingWindow": 33}]}


@pytest.fixture(scope="module", params=vllm_kernel.VERSIONS)
def env(request):
    """vLLM's kernel of each release the tests compile (0.34's launcher also asks the GPU's
    shared memory and ``is_xpu``: compile-only answers both for the target)."""
    path = vllm_kernel.ensure(version=request.param)
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "initcontainer"), str(path)]))
    e.pop("TRITON_INTERPRET", None)
    return e


def run(env, cache: Path, command: str, *extra: str) -> dict:
    plan = cache.parent / "plan.json"
    plan.write_text(json.dumps(PLAN))
    out = subprocess.run([sys.executable, "-m", "kernel_warmer", "run", "--plan", str(plan), "--cache-dir", str(cache),
                          "--compile-only", "--target", "sm_90", "--no-flashinfer", "--serve-command", command,
                          "--termination-log", "/nonexistent/x", *extra],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def kernels(cache: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cache / "triton").glob("*/_fwd_kernel.json"))]


def test_vllms_kernel_compiles_once_per_call_site_specialization(env, tmp_path):
    cache = tmp_path / "cache"
    s = run(env, cache, "vllm serve m --attention-backend TRITON_ATTN --hf-overrides '{\"is_causal\": false}'")
    assert s["details"]["provider"] == "vllm"
    assert s["triton"] == {"compiled": 2, "hit": 0, "skipped": 0, "failed": 0}  # full and (32, 32) window
    metas = kernels(cache)
    assert len(metas) == 2
    assert {(m["target"]["arch"], m["num_warps"], m["num_stages"]) for m in metas} == {(90, 4, 1)}
    again = run(env, cache, "vllm serve m --attention-backend TRITON_ATTN --hf-overrides '{\"is_causal\": false}'")
    assert again["triton"]["compiled"] == 0 and again["details"].get("warm")


def test_a_none_window_is_another_kernel_than_minus_one(env, tmp_path):
    """The decoder fork site passes (-1, -1) for a full layer and the ViT site None: vLLM's
    launcher maps None to 0, so the same shapes compile twice. The old provider passed
    None everywhere and the server compiled again."""
    cache = tmp_path / "cache"
    run(env, cache, "vllm serve m --attention-backend TRITON_ATTN --kv-cache-dtype nvfp4")  # causal, (-1,-1)/(32,0)
    assert len(kernels(cache)) == 2
    run(env, cache, "vllm serve m --attention-backend TRITON_ATTN --hf-overrides '{\"is_causal\": false}'")
    assert len(kernels(cache)) == 4  # bidirectional: is_causal is a constexpr too


def test_nothing_reached_compiles_nothing_and_says_why(env, tmp_path):
    s = run(env, tmp_path / "cache", "vllm serve m")
    assert s["triton"]["compiled"] == 0 and kernels(tmp_path / "cache") == []
    assert "context_attention_fwd" in s["details"]["unreached"][0]
