"""Triton warmer on a real GPU: kernel correctness for real configs, zero JIT after warmup,
a cold cache compiling each variant, and compile-only entries equal to GPU-built ones.

Skipped without CUDA. Long logs go to $OUT when set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.sites import FORK_SITE

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
REAL = ["llama3-8b", "gemma2-9b", "mistral-7b-v0.1"]
OUT = Path(os.environ.get("OUT") or "/tmp/kernel-warmer-gpu-logs")
OUT.mkdir(parents=True, exist_ok=True)


def env_for(cache: Path | None = None) -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer"))
    e.pop("TRITON_INTERPRET", None)
    if cache is not None:
        e["TRITON_CACHE_DIR"] = str(cache / "triton")
    return e


def plan_doc(name: str, tp: int = 1) -> dict:
    from kernel_warmer.plan.model import load_arch
    from kernel_warmer.plan.triton import plan_triton

    from kernel_warmer.spec import EngineSection

    # the builtin (causal) self-test kernel compiles the seed fork's decoder site
    fork = EngineSection(attention_backend="TRITON_ATTN", kv_cache_dtype="nvfp4")
    return plan_triton(load_arch(str(CONFIGS / f"{name}.json")), tp, None, fork).to_dict()


def all_variants() -> list[dict]:
    seen: list[dict] = []
    for name in REAL:
        for v in plan_doc(name)["triton_variants"]:
            if v not in seen:
                seen.append(v)
    return seen


def warm(cache: Path, variants: list[dict], *extra: str, tag: str) -> dict:
    plan = cache.parent / f"{tag}-plan.json"
    layers = [{"numHeads": v["num_heads"], "numKvHeads": v["num_kv_heads"], "headSize": v["head_size"],
               "scale": v["scale"], "softcap": v["softcap"],
               "slidingWindow": None if v["sliding_window"][0] < 0 else v["sliding_window"][0] + 1}
              for v in variants]
    plan.write_text(json.dumps({"layers": layers}))
    out = subprocess.run([sys.executable, "-m", "kernel_warmer", "run", "--plan", str(plan), "--cache-dir", str(cache),
                          "--no-flashinfer", *FORK_SITE, "--termination-log", "/nonexistent/x", *extra],
                         capture_output=True, text=True, env=env_for(), timeout=600)
    (OUT / f"warm-{tag}.log").write_text(out.stderr + "\n" + out.stdout)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)


def probe(cache: Path, variants: list[dict], tag: str, **kw) -> dict:
    vf = cache.parent / f"{tag}-variants.json"
    vf.write_text(json.dumps(variants))
    args = [sys.executable, "-m", "kernel_warmer.triton.probe", "--variants", str(vf)]
    for k, v in kw.items():
        args += [f"--{k}", str(v)]
    out = subprocess.run(args, capture_output=True, text=True, env=env_for(cache), timeout=600)
    (OUT / f"probe-{tag}.log").write_text(out.stderr + "\n" + out.stdout)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_builtin_matches_sdpa_for_real_config_variants(name, dtype):
    from support.reference_kernel import (
        random_ragged_batch,
        reference_prefill_attention,
    )

    from kernel_warmer.plan.model import load_arch
    from kernel_warmer.plan.triton import plan_triton
    from kernel_warmer.triton.kernels.prefill_attention import prefill_attention

    for tp in (1, 2):
        for i, v in enumerate(plan_triton(load_arch(str(CONFIGS / f"{name}.json"), dtype), tp).variants):
            # ragged, including 1-token and block-straddling sequences; one longer than the window
            lengths = [1, 17, 129, 300, 64, 5]
            if v.sliding_window[0] >= 0:
                lengths.append(v.sliding_window[0] + 1 + 300)
            dt = getattr(torch, dtype)
            q, k, val, bs, bl = random_ragged_batch(lengths, v.num_heads, v.num_kv_heads, v.head_size, dt,
                                                    "cuda", seed=i)
            o = torch.full_like(q, float("nan"))
            prefill_attention(q, k, val, o, bs, bl, max(lengths), scale=v.scale, softcap=v.softcap,
                              sliding_window=v.sliding_window)
            ref = reference_prefill_attention(q, k, val, bs, bl, v.scale, v.softcap, v.sliding_window)
            err = (o.float() - ref).abs()
            rel = (err.norm() / ref.norm()).item()
            assert not torch.isnan(o).any(), f"{name} tp={tp} {v.label}: NaN in output"
            assert rel < 1e-2 and err.max().item() < 5e-2, f"{name} tp={tp} {v.label}: rel={rel:.2e} max={err.max():.2e}"


def test_zero_jit_after_warmup_and_first_call_near_steady_state(tmp_path):
    variants = all_variants()
    cache = tmp_path / "cache"
    s = warm(cache, variants, tag="zero-jit")
    assert s["triton"]["compiled"] + s["triton"]["hit"] == len(variants) and s["triton"]["failed"] == 0
    # big enough that the kernel, not the per-call overhead, sets the steady-state time
    r = probe(cache, variants, "zero-jit", seqs=8, tokens=8192)
    table = "\n".join(f"{x['variant']:60s} first {x['first_s'] * 1e3:8.2f} ms  steady {x['steady_s'] * 1e3:8.2f} ms"
                      f"  ratio {x['ratio']:.2f}  compiles {x['compiles']}" for x in r["variants"])
    print(table)
    for x in r["variants"]:
        assert x["compiles"] == 0, f"JIT compile after warmup: {x}"
        assert x["ratio"] <= 1.5, f"first call not within 1.5x of steady state: {x}"


def test_without_cache_every_variant_compiles(tmp_path):
    variants = all_variants()
    cache = tmp_path / "empty"
    cache.mkdir()
    r = probe(cache, variants, "cold", seqs=1, tokens=256, steady=1)
    for x in r["variants"]:
        assert x["compiles"] >= 1, f"expected a compile on an empty cache: {x}"


def _entries(cache: Path) -> set[str]:
    return {p.parent.name for p in (cache / "triton").rglob("*.cubin")}


def test_compile_only_entries_equal_gpu_entries_and_hit_on_gpu(tmp_path):
    variants = all_variants()
    major, minor = torch.cuda.get_device_capability()
    target = f"sm_{major * 10 + minor}"
    a, b = tmp_path / "compile-only", tmp_path / "gpu"
    sa = warm(a, variants, "--target", target, tag="compile-only")
    sb = warm(b, variants, tag="gpu")
    assert sa["triton"]["compiled"] == len(variants) and sb["triton"]["compiled"] == len(variants)
    assert _entries(a) == _entries(b) and len(_entries(a)) == len(variants)
    r = probe(a, variants, "compile-only-hit", seqs=1, tokens=256, steady=1)
    assert all(x["compiles"] == 0 for x in r["variants"]), r
