"""Plans from real model configs: variants, dedupe, skips, TP splits, and field-named errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel_warmer.plan.model import ConfigError, load_arch
from kernel_warmer.plan.triton import plan_triton
from kernel_warmer.spec import EngineSection, LayerSpec, ModelSource

# The per-layer logic below is what every site plans; the seed fork's decoder site reaches
# every decoder layer (TRITON_ATTN + nvfp4 KV). tests/unit/test_plan_triton_sites.py: which site when.
FORK = EngineSection(attention_backend="TRITON_ATTN", kv_cache_dtype="nvfp4")

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"


def cfg(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def variants(source, tp=1, dtype=None):
    """The shape half of each variant (the fork site's own keys are checked once, below)."""
    out = []
    for v in plan_triton(load_arch(source, dtype), tp, dtype, FORK).variants:
        d = v.to_dict()
        assert (d.pop("site"), d.pop("is_causal"), d.pop("sinks")) == ("fork.nvfp4_prefill", True, False)
        out.append(d)
    return out


def test_llama3_gqa_one_variant_per_rank_shape():
    vs = variants(str(CONFIGS / "llama3-8b.json"), tp=2)
    assert vs == [{"num_heads": 16, "num_kv_heads": 4, "head_size": 128, "scale": 128 ** -0.5,
                   "softcap": 0.0, "sliding_window": [-1, -1], "dtype": "bfloat16"}]


def test_variant_json_has_exactly_the_contract_keys():
    (variant,) = plan_triton(load_arch(cfg("llama3-8b")), 1, None, FORK).variants
    v = variant.to_dict()
    assert set(v) == {"site", "num_heads", "num_kv_heads", "head_size", "scale", "softcap", "sliding_window",
                      "is_causal", "sinks", "dtype"}
    assert isinstance(v["scale"], float) and isinstance(v["softcap"], float)
    assert type(variant).from_dict(v) == variant


def test_gemma2_alternates_window_and_full_with_softcap_and_qpas_scale():
    arch = load_arch(cfg("gemma2-9b"))
    assert arch.dtype == "bfloat16"  # float32 checkpoint served in bf16 under "auto", as vLLM does
    assert [a.sliding_window for a in arch.attention_layers[:4]] == [4096, None, 4096, None]
    vs = variants(cfg("gemma2-9b"))
    assert vs == [
        {"num_heads": 16, "num_kv_heads": 8, "head_size": 256, "scale": 256 ** -0.5, "softcap": 50.0,
         "sliding_window": [4095, 0], "dtype": "bfloat16"},
        {"num_heads": 16, "num_kv_heads": 8, "head_size": 256, "scale": 256 ** -0.5, "softcap": 50.0,
         "sliding_window": [-1, -1], "dtype": "bfloat16"},
    ]


def test_mistral_v01_every_layer_windowed():
    assert variants(cfg("mistral-7b-v0.1")) == [
        {"num_heads": 32, "num_kv_heads": 8, "head_size": 128, "scale": 128 ** -0.5, "softcap": 0.0,
         "sliding_window": [4095, 0], "dtype": "bfloat16"}]


def test_qwen2_use_sliding_window_false_ignores_the_window():
    (v,) = variants(cfg("qwen2-7b"))
    assert v["sliding_window"] == [-1, -1]


def test_qwen2_use_sliding_window_true_windows_layers_from_max_window_layers():
    c = dict(cfg("qwen2-7b"), use_sliding_window=True, max_window_layers=20, sliding_window=32768)
    arch = load_arch(c)
    assert [a.sliding_window for a in arch.attention_layers][19:21] == [None, 32768]
    assert [v["sliding_window"] for v in variants(c)] == [[-1, -1], [32767, 0]]


def test_gemma3_text_config_defaults_and_pattern():
    arch = load_arch(cfg("gemma3-4b-it"))
    assert arch.model_type == "gemma3_text" and arch.num_hidden_layers == 34
    # sliding_window_pattern 6 (Gemma3TextConfig default): every 6th layer global
    assert [a.sliding_window for a in arch.attention_layers[:6]] == [1024] * 5 + [None]
    assert variants(cfg("gemma3-4b-it"), tp=1) == [
        {"num_heads": 8, "num_kv_heads": 4, "head_size": 256, "scale": 256 ** -0.5, "softcap": 0.0,
         "sliding_window": [1023, 0], "dtype": "bfloat16"},
        {"num_heads": 8, "num_kv_heads": 4, "head_size": 256, "scale": 256 ** -0.5, "softcap": 0.0,
         "sliding_window": [-1, -1], "dtype": "bfloat16"},
    ]


def test_gemma3_layer_types_and_query_pre_attn_scalar():
    vs = variants(cfg("gemma3-27b-it"), tp=4)
    assert [v["sliding_window"] for v in vs] == [[1023, 0], [-1, -1]]
    assert vs[0]["scale"] == pytest.approx(168 ** -0.5)
    assert (vs[0]["num_heads"], vs[0]["num_kv_heads"]) == (8, 4)


def test_layer_types_wrong_length_names_the_field():
    c = cfg("gemma3-27b-it")
    c["text_config"]["layer_types"] = c["text_config"]["layer_types"][:10]
    with pytest.raises(ConfigError) as e:
        load_arch(c)
    assert e.value.field == "text_config.layer_types"


def test_gpt_oss_layers_with_sinks_are_skipped_with_reason():
    p = plan_triton(load_arch(cfg("gpt-oss-20b")), 1, engine=FORK)
    assert p.variants == []
    assert len(p.skipped) == 24 and {s.reason for s in p.skipped} == {"sinks"}
    assert p.to_dict()["skipped_layers"][0] == {"layer": 0, "reason": "sinks"}


def test_moe_and_quantization_fields():
    mix = load_arch(cfg("mixtral-8x7b"))
    assert (mix.moe.num_experts, mix.moe.experts_per_token, mix.moe.intermediate_size) == (8, 2, 14336)
    assert mix.intermediate_size is None  # every layer is MoE
    q3 = load_arch(cfg("qwen3-30b-a3b"))
    assert (q3.moe.num_experts, q3.moe.experts_per_token, q3.moe.intermediate_size) == (128, 8, 768)
    assert load_arch(cfg("qwen3-8b-fp8")).quantization == "fp8"
    assert load_arch(cfg("gpt-oss-20b")).quantization == "mxfp4"
    assert load_arch(cfg("llama3-8b")).quantization == "none"
    nvfp4 = dict(cfg("llama3-8b"), quantization_config={"quant_method": "modelopt", "quant_algo": "NVFP4"})
    assert load_arch(nvfp4).quantization == "nvfp4"
    ct = dict(cfg("llama3-8b"), quantization_config={
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float"}}}})
    assert load_arch(ct).quantization == "fp8"
    ds = dict(cfg("llama3-8b"), n_routed_experts=64, num_experts_per_tok=6, moe_intermediate_size=1408,
              n_shared_experts=2, first_k_dense_replace=1)
    a = load_arch(ds)
    assert a.moe.shared_expert_intermediate_size == 2816 and a.intermediate_size == 14336


def test_kv_heads_replicated_when_tp_exceeds_them():
    (v,) = variants(cfg("llama3-8b"), tp=16)
    assert (v["num_heads"], v["num_kv_heads"]) == (2, 1)


def test_tp_must_divide_heads_error_names_field():
    with pytest.raises(ConfigError) as e:
        variants(cfg("llama3-8b"), tp=3)
    assert e.value.field == "num_attention_heads" and "tensor-parallel size 3" in str(e.value)


def test_tp_beyond_kv_heads_must_be_a_multiple():
    c = dict(cfg("llama3-8b"), num_attention_heads=24, num_key_value_heads=8, head_dim=128)
    with pytest.raises(ConfigError) as e:
        variants(c, tp=12)
    assert e.value.field == "num_key_value_heads"


def test_nested_field_errors_carry_the_prefix():
    c = cfg("gemma3-27b-it")
    c["text_config"]["num_attention_heads"] = "many"
    with pytest.raises(ConfigError) as e:
        load_arch(c)
    assert e.value.field == "text_config.num_attention_heads"


def test_missing_heads_and_head_dim():
    c = cfg("llama3-8b")
    del c["num_attention_heads"]
    with pytest.raises(ConfigError, match="num_attention_heads"):
        load_arch(c)
    c = dict(cfg("llama3-8b"), hidden_size=4090)
    with pytest.raises(ConfigError) as e:
        load_arch(c)
    assert e.value.field == "head_dim"


def test_dtype_sources_and_override():
    c = dict(cfg("llama3-8b"))
    del c["torch_dtype"]
    c["dtype"] = "float16"  # transformers >= 4.56 spells it dtype
    assert load_arch(c).dtype == "float16"
    assert variants(cfg("llama3-8b"), dtype="float32")[0]["dtype"] == "float32"
    with pytest.raises(ConfigError) as e:
        load_arch(dict(cfg("llama3-8b"), torch_dtype="int8"))
    assert e.value.field == "torch_dtype"


def test_dedupe_keeps_first_seen_order_across_explicit_layers():
    src = ModelSource(layers=[
        LayerSpec(num_heads=8, num_kv_heads=2, head_size=64, count=3, sliding_window=512),
        LayerSpec(num_heads=8, num_kv_heads=2, head_size=64, count=1),
        LayerSpec(num_heads=8, num_kv_heads=2, head_size=64, count=2, sliding_window=512),
        LayerSpec(num_heads=8, num_kv_heads=2, head_size=64, sinks=True),
        LayerSpec(num_heads=8, num_kv_heads=2, head_size=64, alibi=True),
    ])
    p = plan_triton(load_arch(src), 2, engine=FORK)
    assert [v.sliding_window for v in p.variants] == [(511, 0), (-1, -1)]
    assert [(s.layer, s.reason) for s in p.skipped] == [(6, "sinks"), (7, "alibi")]


def test_explicit_layer_errors_name_the_layer():
    src = ModelSource(layers=[LayerSpec(num_heads=8, num_kv_heads=2, head_size=64),
                              LayerSpec(num_heads=6, num_kv_heads=4, head_size=64)])
    with pytest.raises(ConfigError) as e:
        load_arch(src)
    assert e.value.field == "layers[1].numKvHeads"
    src = ModelSource(layers=[LayerSpec(num_heads=6, num_kv_heads=2, head_size=64)])
    with pytest.raises(ConfigError) as e:
        plan_triton(load_arch(src), 4, engine=FORK)
    assert e.value.field == "layers[0].numHeads"
