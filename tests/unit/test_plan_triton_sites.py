"""plan/triton.py: which of vLLM's calls of context_attention_fwd a model and its serving
command reach, and the exact arguments of each (vLLM 0.33.0; docs/VLLM.md cites the lines)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from kernel_warmer.engine import merge_into_spec, parse_serve
from kernel_warmer.plan.model import ConfigError, load_arch
from kernel_warmer.plan.triton import ENCODER, FORK, VIT, plan_triton
from kernel_warmer.spec import WarmerSpec

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"


def plan(config: str, command: str):
    spec = WarmerSpec.from_dict(merge_into_spec({"model": {"configPath": str(CONFIGS / f"{config}.json")}},
                                                parse_serve(shlex.split(command)))[0])
    return plan_triton(load_arch(spec.model, spec.dtype), spec.tensor_parallel_size, spec.dtype, spec.engine)


def calls(p):
    return [(v.site, v.num_heads, v.num_kv_heads, v.head_size, v.dtype, v.call_kwargs()) for v in p.variants]


def enc(window=None):
    return {"is_causal": False, "softmax_scale": 0.125, "sliding_window_q": window or -1,
            "sliding_window_k": window or -1, "sinks": False}


T = "--attention-backend TRITON_ATTN"
TABLE = [
    # BERT family on TRITON_ATTN: bidirectional, the impl's raw tuple, sinks passed; fp32 -> fp16
    ("bge-m3", f"vllm serve BAAI/bge-m3 -tp 2 {T}", [(ENCODER, 8, 8, 64, "float16", enc())]),
    # ModernBERT: every rank keeps all heads; local layers (W-1, W-1) with W = 128 // 2 + 1
    ("modernbert-base", f"vllm serve answerdotai/ModernBERT-base -tp 2 {T}",
     [(ENCODER, 12, 12, 64, "float16", enc()), (ENCODER, 12, 12, 64, "float16", enc(64))]),
    # ViT wrapper: None windows (mapped to 0 by the launcher: another kernel than -1)
    ("qwen2.5-vl-7b", "vllm serve Qwen/Qwen2.5-VL-7B-Instruct -tp 2 --mm-encoder-attn-backend TRITON_ATTN",
     [(VIT, 8, 8, 80, "bfloat16", {"is_causal": False, "softmax_scale": 80 ** -0.5,
                                   "sliding_window_q": None, "sliding_window_k": None})]),
    ("qwen2.5-vl-7b", "vllm serve Q -tp 2 --mm-encoder-attn-backend TRITON_ATTN --mm-encoder-tp-mode data",
     [(VIT, 16, 16, 80, "bfloat16", {"is_causal": False, "softmax_scale": 80 ** -0.5,
                                     "sliding_window_q": None, "sliding_window_k": None})]),
    # the seed fork's decoder prefill: causal, (W-1, 0), softcap where the signature takes it
    ("gemma2-9b", f"vllm serve g -tp 2 {T} --kv-cache-dtype nvfp4",
     [(FORK, 8, 4, 256, "bfloat16", {"is_causal": True, "softmax_scale": 256 ** -0.5, "sliding_window_q": 4095,
                                     "sliding_window_k": 0, "softcap": 50.0}),
      (FORK, 8, 4, 256, "bfloat16", {"is_causal": True, "softmax_scale": 256 ** -0.5, "sliding_window_q": -1,
                                     "sliding_window_k": -1, "softcap": 50.0})]),
    # decoder models on vLLM's defaults: no site at all
    ("llama3-8b", "vllm serve meta-llama/Llama-3.1-8B-Instruct -tp 2", []),
    ("llama3-8b", f"vllm serve m {T}", []),  # TRITON_ATTN prefill runs unified_attention
    ("qwen2.5-vl-7b", "vllm serve Qwen/Qwen2.5-VL-7B-Instruct", []),  # the ViT picks FLASH_ATTN
    ("bge-m3", "vllm serve BAAI/bge-m3", []),  # encoder layers on FLASH_ATTN by default
    ("bge-m3", f"vllm serve BAAI/bge-m3 {T} --kv-cache-dtype fp8", []),  # vLLM refuses: no call
]


@pytest.mark.parametrize("config,command,expected", TABLE, ids=[f"{c}:{cmd.split(' ', 3)[-1]}" for c, cmd, _ in TABLE])
def test_sites_and_arguments(config, command, expected):
    got = calls(plan(config, command))
    assert [g[:5] for g in got] == [e[:5] for e in expected]
    for g, e in zip(got, expected):
        assert g[5] == pytest.approx(e[5])


def test_qwen3_bidirectional_from_hf_overrides():
    p = plan("qwen3-embedding-0.6b", f"vllm serve Qwen/Qwen3-Embedding-0.6B -tp 4 {T} "
                                     "--hf-overrides '{\"is_causal\": false}'")
    assert calls(p) == [(ENCODER, 4, 2, 128, "bfloat16", {**enc(), "softmax_scale": 128 ** -0.5})]
    assert calls(plan("qwen3-embedding-0.6b", f"vllm serve Q -tp 4 {T}")) == []  # causal: a decoder


def test_unreached_parts_say_why():
    p = plan("llama3-8b", "vllm serve m")
    assert p.variants == [] and "FLASH_ATTN" in p.unreached[0] and "unified_attention" in p.unreached[0]
    p = plan("bge-m3", f"vllm serve BAAI/bge-m3 {T} --kv-cache-dtype fp8")
    assert "quantized KV cache" in p.unreached[0]
    p = plan("qwen2.5-vl-7b", "vllm serve Q")
    assert any(u.startswith("vision tower: runs on FLASH_ATTN") for u in p.unreached)


def test_float32_and_odd_head_sizes_pick_triton_automatically():
    """No flag, but FlashAttention rejects the layer: vLLM falls back to TRITON_ATTN."""
    assert [c[0] for c in calls(plan("bge-m3", "vllm serve BAAI/bge-m3 --dtype float32"))] == [ENCODER]


def test_tp_that_does_not_split_the_heads_names_the_field_even_without_a_site():
    with pytest.raises(ConfigError) as err:
        plan("llama3-8b", "vllm serve m -tp 3")
    assert err.value.field == "num_attention_heads"
    with pytest.raises(ConfigError) as err:
        plan("qwen2.5-vl-7b", "vllm serve Q -tp 3 --mm-encoder-attn-backend TRITON_ATTN")
    assert "num_attention_heads" in err.value.field  # the text layers fail first, as in vLLM


def test_none_and_minus_one_windows_are_different_variants():
    vit = plan("qwen2.5-vl-7b", "vllm serve Q --mm-encoder-attn-backend TRITON_ATTN").variants[0]
    assert vit.sliding_window is None and vit.to_dict()["sliding_window"] is None
    enc_v = plan("bge-m3", f"vllm serve B {T}").variants[0]
    assert enc_v.sliding_window == (-1, -1)
    assert type(vit).from_dict(vit.to_dict()) == vit
