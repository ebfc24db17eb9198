"""FlashInfer kernels vLLM compiles on first use without tuning them: FP8 block-scale dense
layers on Hopper call ``fp8_blockscale_gemm_sm90`` for M < 32 (vLLM 0.33,
kernels/linear/scaled_mm/flashinfer.py), which builds FlashInfer's ``fp8_blockscale_gemm_90``
module and compiles DeepGEMM kernels into ``$TRTLLM_DG_CACHE_DIR``. The plan (which shapes,
when not), the serving container's env switches, the module to build, and the kernels in
the manifest (a missing or truncated cubin reads as cold)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel_warmer.cache.manifest import file_entries, verify, write_manifest
from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.engine import EngineArgError, command_paths, parse_serve
from kernel_warmer.flashinfer import jit
from kernel_warmer.flashinfer.phase import jit_files
from kernel_warmer.plan.flashinfer import FP8_BLOCK_OP, plan_jit_calls, plan_ops
from kernel_warmer.plan.model import load_arch
from kernel_warmer.spec import EngineSection

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "configs"


def qwen3_fp8(**override):
    cfg = json.loads((FIXTURES / "qwen3-8b-fp8.json").read_text())
    cfg.update(override)
    return load_arch(cfg)


def test_qwen3_8b_fp8_on_hopper_calls_every_dense_shape_below_m32():
    calls, skipped = plan_jit_calls(qwen3_fp8(), 1, "auto", 90)
    assert skipped == []
    # Qwen3-8B: 32 heads, 8 KV heads of 128, hidden 4096, intermediate 12288
    assert {(c.layer, c.n, c.k) for c in calls} == {
        ("qkv", (32 + 2 * 8) * 128, 4096), ("o", 4096, 4096), ("gate_up", 2 * 12288, 4096), ("down", 4096, 12288)}
    assert all(c.op == FP8_BLOCK_OP and c.m_values == tuple(range(1, 32)) for c in calls)
    # nothing there is autotuned: plan_ops says why for every dense layer
    ops, why = plan_ops(qwen3_fp8(), 1, 8192, "auto", 90)
    assert ops == [] and all("fp8_blockscale_gemm_sm90" in s.reason for s in why)


def test_tensor_parallel_shapes_are_per_rank():
    calls, _ = plan_jit_calls(qwen3_fp8(), 4, "auto", 90)
    assert {(c.layer, c.n, c.k) for c in calls} == {
        ("qkv", (8 + 2 * 2) * 128, 4096), ("o", 4096, 1024), ("gate_up", 2 * 3072, 4096), ("down", 4096, 3072)}


@pytest.mark.parametrize("arch, sm, engine, reason", [
    (qwen3_fp8(), 100, EngineSection(), "SM90 only"),
    (qwen3_fp8(), 90, EngineSection(flashinfer_blockscale_fp8_gemm=False), "VLLM_BLOCKSCALE_FP8_GEMM_FLASHINFER=0"),
    (qwen3_fp8(), 90, EngineSection(deep_gemm=False), "VLLM_USE_DEEP_GEMM=0"),
    (qwen3_fp8(torch_dtype="float16"), 90, EngineSection(), "float16"),
], ids=["blackwell", "flashinfer-off", "deepgemm-off", "fp16-model"])
def test_when_vllm_does_not_take_the_flashinfer_path_every_shape_says_why(arch, sm, engine, reason):
    calls, skipped = plan_jit_calls(arch, 1, "auto", sm, engine)
    assert calls == [] and len(skipped) == 4
    assert all(s.op == FP8_BLOCK_OP and reason in s.reason for s in skipped)


def test_a_shape_deepgemm_cannot_take_runs_cutlass_and_is_named():
    calls, skipped = plan_jit_calls(qwen3_fp8(intermediate_size=12352), 1, "auto", 90)  # K = 12352 = 96.5 x 128
    assert [(s.layer, s.k) for s in skipped] == [("down", 12352)] and "K of 128" in skipped[0].reason
    assert {c.layer for c in calls} == {"qkv", "o", "gate_up"}


@pytest.mark.parametrize("config", ["llama3-8b.json", "qwen3-30b-a3b.json"])
def test_models_that_are_not_fp8_block_scaled_plan_nothing(config):
    assert plan_jit_calls(load_arch(json.loads((FIXTURES / config).read_text())), 1, "auto", 90) == ([], [])


@pytest.mark.parametrize("env, want", [
    ({"VLLM_USE_DEEP_GEMM": "0"}, {"engine.deepGemm": False}),
    ({"VLLM_BLOCKSCALE_FP8_GEMM_FLASHINFER": " 1 "}, {"engine.flashinferBlockscaleFp8Gemm": True}),
    ({"VLLM_BLOCKSCALE_FP8_GEMM_FLASHINFER": "0", "HF_HOME": "/hf"}, {"engine.flashinferBlockscaleFp8Gemm": False}),
])
def test_the_serving_containers_env_switches_are_read_as_vllm_reads_them(env, want):
    serve = parse_serve(["vllm", "serve", "m"], [], env)
    assert dict(serve.settings) == want
    assert all(serve.sources[k] == f"env {name}" for k, name in zip(want, env))
    assert set(want) <= command_paths()


def test_a_value_vllm_would_crash_on_names_the_env_var():
    with pytest.raises(EngineArgError) as e:
        parse_serve(["vllm", "serve", "m"], [], {"VLLM_USE_DEEP_GEMM": "yes"})
    assert e.value.field == "env VLLM_USE_DEEP_GEMM" and "0 or 1" in str(e.value)


def test_a_value_from_a_secret_is_not_read_and_said():
    serve = parse_serve(["vllm", "serve", "m"], [], {"VLLM_USE_DEEP_GEMM": None})
    assert dict(serve.settings) == {} and any("VLLM_USE_DEEP_GEMM" in n and "valueFrom" in n for n in serve.notes)


def test_the_module_built_first_is_the_one_fp8_blockscale_gemm_sm90_loads():
    calls, _ = plan_jit_calls(qwen3_fp8(), 1, "auto", 90)
    mods = jit.modules_for([], 90, tuple(calls))
    assert [m.name for m in mods] == ["fp8_blockscale_gemm_90"]
    assert "gen_fp8_blockscale_gemm_sm90_module" in mods[0].argv[-1] and "build_and_load" in mods[0].argv[-1]
    assert jit.modules_for([], 90, ()) == []


def test_the_deepgemm_cache_defaults_to_the_volume_and_keeps_the_operators_value(tmp_path):
    env: dict = {}
    assert jit.ensure_deepgemm_cache(tmp_path / "dg", env) == tmp_path / "dg" and env[jit.ENV_DEEPGEMM] == str(tmp_path / "dg")
    env = {jit.ENV_DEEPGEMM: "/mnt/cache/flashinfer-jit/deepgemm"}
    assert jit.ensure_deepgemm_cache(tmp_path / "dg", env) == Path("/mnt/cache/flashinfer-jit/deepgemm")
    assert CacheLayout(Path("/c")).deepgemm_dir == Path("/c/flashinfer-jit/deepgemm")


def test_compiled_kernels_are_in_the_manifest_and_a_truncated_one_reads_cold(tmp_path, monkeypatch):
    layout = CacheLayout(tmp_path / "cache")
    workspace = layout.flashinfer_jit_dir
    monkeypatch.setenv(jit.ENV_DEEPGEMM, str(layout.deepgemm_dir))
    kernel = layout.deepgemm_dir / "cache" / "gemm_swapAB_4096_4096_128_64_128_1_81_8_1_Normal" / jit.DEEPGEMM_KERNEL
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"\x7fELF" + bytes(4096))
    (kernel.parent / "kernel.cu").write_text("// the source DeepGEMM keeps beside it: not a kernel")
    (layout.deepgemm_dir / "tmp").mkdir()
    files = jit_files(workspace, layout, lambda s: None)
    assert [Path(f["path"]) for f in files] == [kernel]
    write_manifest(layout, "k", {}, {}, file_entries(layout, [f["path"] for f in files]), {})
    assert verify(layout, "k").warm
    kernel.write_bytes(b"\x7fELF")
    assert not verify(layout, "k").warm


def test_kernels_outside_the_volume_are_not_listed(tmp_path, monkeypatch):
    layout = CacheLayout(tmp_path / "cache")
    elsewhere = tmp_path / "home" / ".tensorrt_llm"
    (elsewhere / "cache" / "gemm_x").mkdir(parents=True)
    (elsewhere / "cache" / "gemm_x" / jit.DEEPGEMM_KERNEL).write_bytes(b"cubin")
    monkeypatch.setenv(jit.ENV_DEEPGEMM, str(elsewhere))
    assert jit.deepgemm_kernels(elsewhere) and jit_files(layout.flashinfer_jit_dir, layout, lambda s: None) == []
