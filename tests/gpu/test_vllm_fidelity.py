"""Engine fidelity on a GPU: vLLM's own prefill kernel, from vLLM's PyPI wheel, called the
way vLLM's call sites call it, after the warmer ran from the serving command alone.

For each real config and serving command the test lists, by hand from vLLM 0.33.0's model
code (not from the warmer's plan), the attention calls the server makes. After
``kernel-warmer run --serve-command ...`` (on the GPU, and compile-only with no GPU
visible), a fresh process makes those calls on ragged batches: **zero compiles**, and the
results match PyTorch SDPA. A planner or argument mistake shows up as a compile.

Every case runs with vLLM 0.33.0's kernel; a few cases also with the oldest and the newest
release the warmer knows (0.26.0, 0.34.0: another kernel file, and 0.34's launcher asks
the GPU's shared memory), since the call sites pass the same arguments in every release.

Needs CUDA and vLLM's kernel modules (``tests/support/vllm_kernel.py`` fetches them from
PyPI into ``.vllm-kernel/<version>``; on a machine without network, carry that folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
OUT = Path(os.environ.get("OUT") or "/tmp/kernel-warmer-gpu-logs")
OUT.mkdir(parents=True, exist_ok=True)
import vllm_kernel  # noqa: E402  (tests/support, on sys.path via tests/conftest.py)

BF16, FP16 = "bfloat16", "float16"


def enc(heads, kv, d, window=None, dtype=FP16):
    return {"site": "encoder", "heads": heads, "kv_heads": kv, "head_size": d, "window": window,
            "causal": False, "scale": d ** -0.5, "dtype": dtype}


def vit(heads, d, dtype=BF16):
    return {"site": "vit", "heads": heads, "kv_heads": heads, "head_size": d, "window": None,
            "causal": False, "scale": d ** -0.5, "dtype": dtype}


def fork(heads, kv, d, window=None, scale=None, dtype=BF16):
    return {"site": "fork", "heads": heads, "kv_heads": kv, "head_size": d, "window": window,
            "causal": True, "scale": scale or d ** -0.5, "dtype": dtype}


@dataclass
class Case:
    name: str
    config: str
    serve: str
    calls: list  # what vLLM's model code calls, per rank (see each comment)


TRITON = "--attention-backend TRITON_ATTN"
CASES = [
    # XLM-R (bert.py:231-275): heads // tp, MHA, head 1024/16; fp32 config -> fp16 for pooling.
    Case("bge-m3-tp1", "bge-m3", f"vllm serve BAAI/bge-m3 {TRITON}", [enc(16, 16, 64)]),
    Case("bge-m3-tp2", "bge-m3", f"vllm serve BAAI/bge-m3 -tp 2 {TRITON}", [enc(8, 8, 64)]),
    # ModernBERT (modernbert.py:68-116): all 12 heads on every rank; local layers window 128//2+1.
    Case("modernbert-tp2", "modernbert-base", f"vllm serve answerdotai/ModernBERT-base -tp 2 {TRITON}",
         [enc(12, 12, 64), enc(12, 12, 64, window=65)]),
    # Qwen3 with is_causal false (qwen3.py:197-200): GQA 16/8 heads of 128, bf16 config.
    Case("qwen3-bidir-tp4", "qwen3-embedding-0.6b",
         f"vllm serve Qwen/Qwen3-Embedding-0.6B -tp 4 {TRITON} --hf-overrides '{{\"is_causal\": false}}'",
         [enc(4, 2, 128, dtype=BF16)]),
    # Qwen2.5-VL vision tower (qwen2_5_vl.py:353-402): 16 heads of 1280/16 = 80, split over TP.
    Case("qwen25vl-vit-tp2", "qwen2.5-vl-7b",
         "vllm serve Qwen/Qwen2.5-VL-7B-Instruct -tp 2 --mm-encoder-attn-backend TRITON_ATTN", [vit(8, 80)]),
    Case("qwen25vl-vit-data", "qwen2.5-vl-7b",
         "vllm serve Qwen/Qwen2.5-VL-7B-Instruct -tp 2 --mm-encoder-attn-backend TRITON_ATTN "
         "--mm-encoder-tp-mode data", [vit(16, 80)]),
    # The seed fork's decoder prefill (TRITON_ATTN + nvfp4 KV): full, window + full (Gemma 2).
    Case("llama-fork-tp1", "llama3-8b", f"vllm serve meta-llama/Llama-3.1-8B {TRITON} --kv-cache-dtype nvfp4",
         [fork(32, 8, 128)]),
    Case("gemma2-fork-tp2", "gemma2-9b", f"vllm serve google/gemma-2-9b -tp 2 {TRITON} --kv-cache-dtype nvfp4",
         [fork(8, 4, 256, window=4096, scale=256 ** -0.5), fork(8, 4, 256, scale=256 ** -0.5)]),
]
# Decoder models on vLLM's defaults reach no site: the warmer must compile nothing.
UNREACHED = [("llama3-8b", "vllm serve meta-llama/Llama-3.1-8B -tp 2"),
             ("qwen2.5-vl-7b", "vllm serve Qwen/Qwen2.5-VL-7B-Instruct")]


# (case, vLLM release): every case on 0.33.0, these also on 0.26.0 and 0.34.0
OTHER_RELEASES = ("bge-m3-tp1", "gemma2-fork-tp2")
RUNS = [pytest.param(c, v, id=f"{c.name}-{v}") for v in vllm_kernel.VERSIONS for c in CASES
        if v == vllm_kernel.VLLM_VERSION or c.name in OTHER_RELEASES]


@pytest.fixture(scope="session")
def vllm_path() -> Path:
    return vllm_kernel.ensure()


def release_path(version: str) -> Path:
    return vllm_kernel.ensure(version=version)


def env_for(vllm_path: Path, cache: Path | None = None, gpu: bool = True) -> dict:
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "initcontainer"), str(vllm_path)]))
    e.pop("TRITON_INTERPRET", None)
    if cache is not None:
        e["TRITON_CACHE_DIR"] = str(cache / "triton")
    if not gpu:
        e["CUDA_VISIBLE_DEVICES"] = ""
    return e


def warm(case: Case, cache: Path, vllm_path: Path, *extra: str, gpu: bool = True) -> dict:
    out = subprocess.run([sys.executable, "-m", "kernel_warmer", "run", "--model-config",
                          str(CONFIGS / f"{case.config}.json"), "--serve-command", case.serve,
                          "--cache-dir", str(cache), "--no-flashinfer", "--termination-log", "/nonexistent/x",
                          *extra], capture_output=True, text=True, env=env_for(vllm_path, gpu=gpu), timeout=600)
    (OUT / f"warm-{case.name}{'-co' if extra else ''}.log").write_text(out.stderr + "\n" + out.stdout)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)


def server_calls(case: Case, cache: Path, vllm_path: Path, tag: str) -> list[dict]:
    calls = cache.parent / f"{tag}-calls.json"
    calls.write_text(json.dumps(case.calls))
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "vllm_server_calls.py"), str(calls)],
                         capture_output=True, text=True, env=env_for(vllm_path, cache), timeout=600)
    (OUT / f"server-{tag}.log").write_text(out.stderr + "\n" + out.stdout)
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])["results"]
    with open(OUT / "fidelity.jsonl", "a") as f:
        for r in results:
            f.write(json.dumps({"case": tag, **r}) + "\n")
    return results


@pytest.mark.parametrize("case,release", RUNS)
@pytest.mark.parametrize("mode", ["gpu", "compile-only"])
def test_server_calls_compile_nothing_after_warmup(case, release, mode, tmp_path):
    vllm_path = release_path(release)
    cache = tmp_path / "cache"
    if mode == "gpu":
        summary = warm(case, cache, vllm_path)
    else:
        summary = warm(case, cache, vllm_path, "--compile-only", "--target", "sm_90", gpu=False)
    assert summary["triton"]["failed"] == 0, summary
    assert summary["triton"]["compiled"] >= 1, summary
    # the release's own row, its released kernel file (the FlashInfer of this machine need not be its pin)
    assert summary["versions"]["vllm"] == release, summary
    assert not [w for w in summary.get("warnings") or [] if "pins flashinfer" not in w], summary
    results = server_calls(case, cache, vllm_path, f"{case.name}-{release}-{mode}")
    for r in results:
        assert r["compiled"] == 0, f"the server compiled after warmup: {r}"
        assert r["max_abs_err"] < 2e-2, r
    # the control: the same calls on an empty cache do compile (the count can fail)
    (tmp_path / "cold").mkdir()
    cold = server_calls(case, tmp_path / "cold" / "cache", vllm_path, f"{case.name}-{release}-{mode}-cold")
    assert all(r["compiled"] >= 1 for r in cold), cold


@pytest.mark.parametrize("config,serve", UNREACHED)
def test_no_site_reached_compiles_nothing_and_says_why(config, serve, tmp_path, vllm_path):
    case = Case("unreached", config, serve, [])
    summary = warm(case, tmp_path / "cache", vllm_path)
    assert summary["triton"]["compiled"] == 0 and summary["triton"]["hit"] == 0, summary
    assert "context_attention_fwd" in json.dumps(summary["details"]["unreached"])
