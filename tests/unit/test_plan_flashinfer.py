"""The FlashInfer op plan: per-rank shapes, KV replication, MoE, quantization, SM gating
(``plan_every_op``, what FlashInfer can tune), and ``plan_ops``: only what vLLM 0.33 calls,
a table of models x serving flags x GPUs from vLLM's own selection code (docs/VLLM.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel_warmer.plan.flashinfer import (
    AutoTuneOp,
    PlanError,
    SkippedOp,
    gemm_tuning_m,
    kv_heads_per_rank,
    plan_every_op,
    plan_ops,
)
from kernel_warmer.plan.model import AttentionLayer, ModelArch, MoE, load_arch
from kernel_warmer.spec import EngineSection

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "configs"


def arch(heads=32, kv=8, head=128, hidden=4096, inter=14336, layers=32, moe=None, quant="none", dtype="bfloat16"):
    attn = [AttentionLayer(i, heads, kv, head, head ** -0.5) for i in range(layers)]
    return ModelArch("llama", dtype, hidden, inter, layers, attn, moe, quant)


def shapes(ops):
    return {(o.layer, o.op, o.n, o.k) for o in ops}


def test_llama3_8b_tp1_shapes():
    ops, skipped = plan_every_op(arch(), 1, 8192, "auto", 90)
    assert skipped == []
    assert shapes(ops) == {
        ("qkv", "bf16_gemm", (32 + 2 * 8) * 128, 4096),
        ("o", "bf16_gemm", 4096, 4096),
        ("gate_up", "bf16_gemm", 2 * 14336, 4096),
        ("down", "bf16_gemm", 4096, 14336),
    }
    assert {o.m_max for o in ops} == {8192}


def test_llama3_8b_tp2_splits_every_projection():
    ops, _ = plan_every_op(arch(), 2, 8192, "none", 90)
    assert shapes(ops) == {
        ("qkv", "bf16_gemm", (16 + 2 * 4) * 128, 4096),
        ("o", "bf16_gemm", 4096, 2048),
        ("gate_up", "bf16_gemm", 14336, 4096),
        ("down", "bf16_gemm", 4096, 7168),
    }


def test_kv_heads_replicated_when_tp_exceeds_them():
    assert kv_heads_per_rank(8, 16) == 1
    assert kv_heads_per_rank(8, 8) == 1
    assert kv_heads_per_rank(8, 2) == 4
    ops, _ = plan_every_op(arch(heads=64, kv=8), 16, 1024, "none", 90)
    qkv = next(o for o in ops if o.layer == "qkv")
    assert qkv.n == (64 // 16 + 2 * 1) * 128


def test_uneven_split_names_the_field():
    with pytest.raises(PlanError, match="tensorParallelSize"):
        plan_every_op(arch(), 3, 8192, "none", 90)
    with pytest.raises(PlanError, match="multiple of the model's 8 KV heads"):
        kv_heads_per_rank(8, 12)


def test_identical_shapes_are_deduped_with_both_layer_names():
    ops, _ = plan_every_op(arch(heads=32, kv=32, head=128, hidden=4096, inter=4096), 1, 8192, "none", 90)
    od = [o for o in ops if (o.n, o.k) == (4096, 4096)]
    assert len(od) == 1 and od[0].layer == "o+down"
    assert len({(o.op, o.n, o.k) for o in ops}) == len(ops)


def test_moe_experts_use_cutlass_fused_moe_per_rank():
    moe = MoE(num_experts=128, experts_per_token=8, intermediate_size=768)
    ops, skipped = plan_every_op(arch(heads=32, kv=4, hidden=2048, inter=None, moe=moe), 2, 4096, "none", 90)
    assert skipped == []
    experts = [o for o in ops if o.op == "cutlass_fused_moe"]
    assert [(o.n, o.k, o.layer, o.m_max) for o in experts] == [(2 * 384, 2048, "experts", 4096)]
    assert not any(o.layer in ("gate_up", "down") for o in ops)  # all-MoE: no dense MLP


def test_shared_expert_is_a_dense_gemm():
    moe = MoE(num_experts=60, experts_per_token=4, intermediate_size=1408, shared_expert_intermediate_size=5632)
    ops, _ = plan_every_op(arch(heads=16, kv=16, hidden=2048, inter=None, moe=moe), 1, 2048, "none", 90)
    assert ("shared_expert.gate_up", "bf16_gemm", 2 * 5632, 2048) in shapes(ops)
    assert ("shared_expert.down", "bf16_gemm", 2048, 5632) in shapes(ops)


def test_fp8_uses_fp8_gemm_and_auto_follows_the_config():
    ops, _ = plan_every_op(arch(quant="fp8"), 1, 8192, "auto", 90)
    assert {o.op for o in ops} == {"fp8_gemm"}
    ops, _ = plan_every_op(arch(quant="fp8"), 1, 8192, "none", 90)  # an explicit spec value wins
    assert {o.op for o in ops} == {"bf16_gemm"}


def test_nvfp4_skipped_on_sm90_planned_on_sm100_and_unknown():
    ops, skipped = plan_every_op(arch(quant="nvfp4"), 1, 8192, "auto", 90)
    assert ops == [] and len(skipped) == 4
    assert all(s.op == "fp4_gemm" and "SM100" in s.reason and "SM90" in s.reason for s in skipped)
    for sm in (100, None):
        ops, skipped = plan_every_op(arch(quant="nvfp4"), 1, 8192, "auto", sm)
        assert skipped == [] and {o.op for o in ops} == {"fp4_gemm"} and len(ops) == 4


def test_nvfp4_moe_needs_sm100():
    moe = MoE(num_experts=8, experts_per_token=2, intermediate_size=14336)
    _, skipped = plan_every_op(arch(quant="nvfp4", moe=moe, inter=None), 1, 8192, "auto", 90)
    assert any(s.op == "cutlass_fused_moe" and "SM100" in s.reason for s in skipped)


def test_fp16_and_unknown_quantization_are_skipped_with_reasons():
    _, skipped = plan_every_op(arch(dtype="float16"), 1, 8192, "none", 90)
    assert skipped and all("float16" in s.reason for s in skipped)
    _, skipped = plan_every_op(arch(quant="awq"), 1, 8192, "auto", 90)
    assert skipped and all("'awq'" in s.reason for s in skipped)


def test_missing_hidden_size_is_a_skip_not_a_crash():
    ops, skipped = plan_every_op(arch(hidden=None), 1, 8192, "none", 90)
    assert ops == [] and "hiddenSize" in skipped[0].reason


@pytest.mark.parametrize("tokens,expect", [
    (1, 1), (100, 128), (256, 256), (257, 512), (1000, 1024), (2048, 2048), (2049, 2560),
    (3000, 3072), (4096, 4096), (4097, 8192), (8192, 8192), (10000, 16384),
])
def test_gemm_m_rounds_up_to_flashinfers_bucket(tokens, expect):
    # Mirrors flashinfer.fused_moe.utils.map_to_hybrid_bucket_uncapped (0.6.18): a runtime
    # M <= tokens maps to a bucket <= gemm_tuning_m(tokens), all of which get tuned.
    assert gemm_tuning_m(tokens) == expect
    ops, _ = plan_every_op(arch(), 1, tokens, "none", 90)
    assert {o.m_max for o in ops} == {expect}


def test_to_dict_keys_are_exact():
    assert set(AutoTuneOp("bf16_gemm", 1, 2, 3, "qkv").to_dict()) == {"op", "n", "k", "m_max", "layer"}
    assert set(SkippedOp("fp4_gemm", 1, 2, "qkv", "why").to_dict()) == {"op", "n", "k", "layer", "reason"}


LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "torch_dtype": "bfloat16", "vocab_size": 128256,
}
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
    "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128,
    "num_experts_per_tok": 8, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
    "num_hidden_layers": 48, "decoder_sparse_step": 1, "mlp_only_layers": [], "torch_dtype": "bfloat16",
}


def test_real_llama3_8b_config_tp4():
    arch_ = load_arch(LLAMA3_8B)
    ops, skipped = plan_every_op(arch_, 4, 8192, "auto", 90)
    assert skipped == []
    assert shapes(ops) == {
        ("qkv", "bf16_gemm", (8 + 2 * 2) * 128, 4096), ("o", "bf16_gemm", 4096, 1024),
        ("gate_up", "bf16_gemm", 7168, 4096), ("down", "bf16_gemm", 4096, 3584),
    }


def test_real_qwen3_moe_config_tp8_replicates_kv():
    arch_ = load_arch(QWEN3_30B_A3B)
    ops, _ = plan_every_op(arch_, 8, 8192, "auto", 90)
    got = shapes(ops)
    assert ("qkv", "bf16_gemm", (4 + 2 * 1) * 128, 2048) in got
    assert ("experts", "cutlass_fused_moe", 2 * 96, 2048) in got


def test_every_fixture_config_plans_without_crashing():
    files = sorted(FIXTURES.glob("*.json")) if FIXTURES.is_dir() else []
    if not files:
        pytest.skip("no tests/fixtures/configs yet")
    load = load_arch
    planned_any = False
    for path in files:
        arch_ = load(json.loads(path.read_text()))
        for sm in (90, 100, None):
            ops, skipped = plan_every_op(arch_, 1, 4096, "auto", sm)
            planned_any |= bool(ops)
            for o in ops:
                assert o.n > 0 and o.k > 0 and o.m_max == 4096, (path.name, o)
            assert all(s.reason for s in skipped)
    assert planned_any


# --- plan_ops: what vLLM 0.33.0 calls -------------------------------------------------------

QWEN3_30B_A3B_FP8_BLOCK = {**QWEN3_30B_A3B, "quantization_config": {
    "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}}
QWEN3_30B_A3B_FP8_STATIC = {**QWEN3_30B_A3B, "quantization_config": {
    "quant_method": "modelopt", "quant_algo": "FP8"}}
MIXTRAL_FP8_DYNAMIC = {**QWEN3_30B_A3B, "quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic"}}


def vllm_plan(config, tp=1, sm=90, **engine):
    ops, skipped = plan_ops(load_arch(config), tp, 8192, "auto", sm, EngineSection(**engine))
    return {(o.op, o.mode, o.tp_size, o.ep_size, o.local_experts, o.n) if o.op == "cutlass_fused_moe" else o.op
            for o in ops}, skipped


# (config, tp, sm, serving-command settings) -> the tuned ops; source: docs/VLLM.md's table
VLLM_TABLE = [
    pytest.param(LLAMA3_8B, 2, 90, {}, set(), id="bf16-dense-hopper-torch"),
    pytest.param(LLAMA3_8B, 1, 100, {}, set(), id="bf16-dense-blackwell-torch"),
    pytest.param(LLAMA3_8B, 1, 100, {"linear_backend": "flashinfer_cutedsl"}, {"bf16_gemm"},
                 id="bf16-dense-blackwell-cutedsl"),
    pytest.param(QWEN3_30B_A3B, 2, 90, {}, set(), id="bf16-moe-hopper-triton"),
    pytest.param(QWEN3_30B_A3B, 2, 90, {"moe_backend": "flashinfer_cutlass"},
                 {("cutlass_fused_moe", "bf16", 2, 1, 128, 2 * 384)}, id="bf16-moe-flashinfer-cutlass"),
    pytest.param(QWEN3_30B_A3B, 2, 90, {"moe_backend": "flashinfer_cutlass", "enable_expert_parallel": True},
                 {("cutlass_fused_moe", "bf16", 1, 2, 64, 2 * 768)}, id="bf16-moe-expert-parallel"),
    pytest.param(QWEN3_30B_A3B, 2, 90, {"moe_backend": "flashinfer_cutlass", "data_parallel_size": 2},
                 {("cutlass_fused_moe", "bf16", 4, 1, 128, 2 * 192)}, id="bf16-moe-tp-times-dp"),
    pytest.param(QWEN3_30B_A3B_FP8_BLOCK, 2, 90, {}, set(), id="fp8-block-moe-tp-triton"),
    pytest.param(QWEN3_30B_A3B_FP8_BLOCK, 2, 90, {"enable_expert_parallel": True},
                 {("cutlass_fused_moe", "fp8_block", 1, 2, 64, 2 * 768)}, id="fp8-block-moe-ep-flashinfer"),
    pytest.param(QWEN3_30B_A3B_FP8_BLOCK, 2, 100, {"enable_expert_parallel": True}, set(),
                 id="fp8-block-moe-blackwell"),
    pytest.param(QWEN3_30B_A3B_FP8_STATIC, 1, 90, {},
                 {("cutlass_fused_moe", "fp8_tensor", 1, 1, 128, 2 * 768)}, id="fp8-static-moe-default"),
    pytest.param(QWEN3_30B_A3B_FP8_STATIC, 1, 90, {"moe_backend": "triton"}, set(), id="fp8-static-moe-triton"),
    pytest.param(MIXTRAL_FP8_DYNAMIC, 1, 90, {}, set(), id="fp8-dynamic-moe-triton"),
    pytest.param(QWEN3_30B_A3B_FP8_STATIC, 1, 90, {"flashinfer_autotune": False}, set(), id="autotune-off"),
]


@pytest.mark.parametrize("config,tp,sm,engine,expected", VLLM_TABLE)
def test_plans_exactly_the_ops_vllm_tunes(config, tp, sm, engine, expected):
    planned, skipped = vllm_plan(config, tp, sm, **engine)
    assert planned == expected
    assert all(s.reason for s in skipped)


def test_what_vllm_does_not_tune_is_skipped_with_the_vllm_reason():
    _, skipped = vllm_plan(LLAMA3_8B, 1, 90)
    assert {s.layer for s in skipped} == {"qkv", "o", "gate_up", "down"}
    assert all("torch (cuBLAS) on Hopper" in s.reason for s in skipped)
    _, skipped = vllm_plan(QWEN3_30B_A3B, 1, 90)
    assert any(s.op == "cutlass_fused_moe" and "--moe-backend flashinfer_cutlass" in s.reason for s in skipped)
    _, skipped = vllm_plan(QWEN3_30B_A3B, 1, 90, flashinfer_autotune=False)
    assert "autotune off" in skipped[0].reason


def test_moe_ranks_are_every_key_flashinfer_separates():
    ops, _ = plan_ops(load_arch(QWEN3_30B_A3B), 2, 64, "auto", 90, EngineSection(moe_backend="flashinfer_cutlass"))
    assert ops[0].rank_keys() == [(0, 0), (1, 0)]
    ops, _ = plan_ops(load_arch(QWEN3_30B_A3B), 2, 64, "auto", 90,
                      EngineSection(moe_backend="flashinfer_cutlass", enable_expert_parallel=True))
    assert ops[0].rank_keys() == [(0, 0), (0, 1)]
    assert ops[0].to_dict()["local_experts"] == 64


def test_experts_that_do_not_spread_name_the_flag():
    odd = {**QWEN3_30B_A3B, "num_experts": 126}
    with pytest.raises(PlanError) as err:
        plan_ops(load_arch(odd), 4, 64, "auto", 90, EngineSection(moe_backend="flashinfer_cutlass",
                                                                  enable_expert_parallel=True))
    assert err.value.field == "engine.enableExpertParallel"


def test_skipped_dense_layers_are_named_by_the_gemm_they_would_be():
    """Unquantized dense layers on Hopper are skipped as bf16_gemm (they were "none_gemm")."""
    from kernel_warmer.plan.model import load_arch

    arch = load_arch({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
                      "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 2,
                      "torch_dtype": "bfloat16"})
    ops, skipped = plan_ops(arch, 1, 8192, "auto", 90)
    assert not ops and {s.op for s in skipped} == {"bf16_gemm"}
