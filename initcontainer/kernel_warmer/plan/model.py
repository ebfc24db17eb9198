"""A model's shapes, read from a Hugging Face config.json or from explicit layers.

Both halves of the plan read this: the Triton variants (attention layers) and the
FlashInfer ops (linear layers). Errors name the config field that could not be resolved.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kernel_warmer.errors import FieldError
from kernel_warmer.spec import MAX_HEAD_SIZE, MAX_HEADS, MAX_LAYERS


class ConfigError(FieldError):
    """A config.json field is missing or wrong; ``field`` names it (dotted)."""

    @staticmethod
    def describe(field_path: str) -> str:
        return f"config field {field_path!r}"


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer, model-wide (not yet split over tensor-parallel ranks)."""

    index: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    scale: float
    softcap: float = 0.0  # 0.0: none
    sliding_window: Optional[int] = None  # tokens; None: full attention
    # Why the NVFP4 pure-prefill path cannot take it ("sinks", "alibi", ...); None: it can.
    skip_reason: Optional[str] = None
    # Which input field an error about this layer's head counts should name.
    heads_field: str = field(default="num_attention_heads", compare=False)
    kv_heads_field: str = field(default="num_key_value_heads", compare=False)


@dataclass(frozen=True)
class MoE:
    num_experts: int
    experts_per_token: int
    intermediate_size: int  # per expert
    shared_expert_intermediate_size: int = 0


@dataclass(frozen=True)
class VisionTower:
    """A vision encoder's attention (vLLM's MMEncoderAttention), model-wide."""

    num_heads: int
    head_size: int
    depth: int
    heads_field: str = field(default="vision_config.num_heads", compare=False)


@dataclass(frozen=True)
class ModelArch:
    model_type: str
    dtype: str  # "bfloat16" | "float16" | "float32"
    hidden_size: Optional[int]
    intermediate_size: Optional[int]  # dense MLP; None where every layer is MoE
    num_hidden_layers: int
    attention_layers: list[AttentionLayer] = field(default_factory=list)
    moe: Optional[MoE] = None
    # "none" | "fp8" | "nvfp4" | other quant_method strings as found
    quantization: str = "none"
    # vLLM runs the text layers bidirectionally (EncoderOnlyAttention: the BERT family, or
    # a config with is_causal false)
    bidirectional: bool = False
    # False: vLLM gives every rank all the heads (ModernBERT, vllm/model_executor/models/modernbert.py)
    heads_split_by_tp: bool = True
    vision: Optional[VisionTower] = None
    # the checkpoint's own dtype before vLLM's "auto" picks a 16-bit one (None: not named)
    checkpoint_dtype: Optional[str] = None
    # FP8 details that decide FlashInfer's MoE path: "static" / "dynamic" activation scales
    # (None: not FP8 or not stated), and whether weights are block-scaled
    fp8_activation_scheme: Optional[str] = None
    fp8_block_scaled: bool = False


# --- the parser ---------------------------------------------------------------------

DTYPES = ("bfloat16", "float16", "float32")
_DTYPE_ALIASES = {
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "float32": "float32", "fp32": "float32", "float": "float32",
}
# Model types vLLM serves with EncoderOnlyAttention (bert.py, roberta.py, bert_with_rope.py,
# modernbert.py in vLLM 0.33).
ENCODER_ONLY_TYPES = {"bert", "roberta", "xlm-roberta", "nomic_bert", "new", "modernbert"}
# NomicBERT's own spellings of the usual fields (vllm/model_executor/models/config.py:858-904).
_FIELD_ALIASES = {"nomic_bert": {"n_head": "num_attention_heads", "n_embd": "hidden_size",
                                 "n_layer": "num_hidden_layers", "n_inner": "intermediate_size"}}
# Vision towers whose attention vLLM 0.33 builds as head_dim = width // num_heads, heads
# split over TP (qwen2_vl.py, qwen2_5_vl.py, qwen3_vl.py); the value is the width's field.
_VISION_WIDTH = {"qwen2_vl": "embed_dim", "qwen2_5_vl": "hidden_size", "qwen3_vl": "hidden_size",
                 "qwen3_vl_moe": "hidden_size"}
# Model types whose every attention layer has learned attention sinks (vLLM passes `sinks`).
_SINK_MODELS = {"gpt_oss"}
# Model types that use ALiBi position biases.
_ALIBI_MODELS = {"bloom", "mpt", "baichuan", "jais"}


# transformers' defaults for fields that real checkpoints leave out (Gemma 3's text_config
# names only what differs from Gemma3TextConfig's defaults).
_TYPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {"num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                    "query_pre_attn_scalar": 256, "sliding_window": 4096, "sliding_window_pattern": 6,
                    "num_hidden_layers": 26, "hidden_size": 2304, "intermediate_size": 9216},
    "gemma2": {"num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
               "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0, "sliding_window": 4096,
               "num_hidden_layers": 26, "hidden_size": 2304, "intermediate_size": 9216},
}


def normalize_dtype(value: Any, field_path: str) -> str:
    """Map config spellings ("bf16", "torch.float16", ...) to one of DTYPES."""
    if not isinstance(value, str) or value.replace("torch.", "") not in _DTYPE_ALIASES:
        raise ConfigError(field_path, f"unsupported dtype {value!r}; use one of {', '.join(DTYPES)}")
    return _DTYPE_ALIASES[value.replace("torch.", "")]


def load_arch(source: Any, dtype_override: Optional[str] = None) -> ModelArch:
    """Parse a model's shapes.

    ``source``: a ``spec.ModelSource``, a path to a config.json (or its folder), or an
    already-loaded config dict. ``dtype_override``: "auto"/None keeps the config's dtype.
    """
    from kernel_warmer.spec import ModelSource  # stdlib-only sibling

    if isinstance(source, ModelSource):
        if source.layers is not None:
            return _arch_from_layers(source, dtype_override)
        source = source.config_path
    if isinstance(source, (str, Path)):
        cfg = read_config(Path(source))
    elif isinstance(source, dict):
        cfg = source
    else:
        raise TypeError(f"load_arch: unsupported source {type(source).__name__}")
    return _arch_from_config(cfg, dtype_override)


# Real config.json files are a few KB (the largest Hugging Face ones, with label maps, are
# well under 1 MiB). Anything past this is refused before it is read or parsed, so a
# hostile or mistaken path (a weights file, /dev/zero) cannot exhaust the init container.
MAX_CONFIG_BYTES = 8 << 20
# Bounds far above any real model, so absurd numbers fail here with the field's name
# instead of as a memory error or a hang in the planner.
MAX_DIM = 1 << 24
MAX_WINDOW = 1 << 31


def read_text_file(path: Path, what: str, field_name: str, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """A small UTF-8 text file, its size checked before it is read; every failure is a
    ``ConfigError(field_name, ...)`` that says which file and why."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise ConfigError(field_name, f"{path} is {size} bytes, over the {max_bytes >> 10} KiB limit "
                                              f"for a {what}")
            raw = f.read(max_bytes + 1)  # /dev/zero and pipes report size 0
    except OSError as exc:
        raise ConfigError(field_name, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise ConfigError(field_name, f"{path} is over the {max_bytes >> 10} KiB limit for a {what}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(field_name, f"{path} is not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); "
                                      f"a {what} must be UTF-8") from None


def read_json_file(path: Path, what: str, field_name: str, max_bytes: int = MAX_CONFIG_BYTES) -> object:
    """``read_text_file`` + JSON, hostile nesting included, as ``ConfigError``."""
    text = read_text_file(path, what, field_name, max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(field_name, f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(field_name, f"{path} nests too deeply to be a {what}") from None


def read_config(path: Path) -> dict:
    if path.is_dir():
        path = path / "config.json"
    cfg = read_json_file(path, "model config.json", "<config.json>")
    if not isinstance(cfg, dict):
        raise ConfigError("<config.json>", f"{path} must hold a JSON object")
    return cfg


def _resolve_dtype(found: Any, found_field: str, override: Optional[str]) -> str:
    if override not in (None, "auto"):
        return normalize_dtype(override, "dtype")
    if found is None:
        return "bfloat16"
    dtype = normalize_dtype(found, found_field)
    # vLLM's "auto" serves float32 checkpoints in a 16-bit type (bf16 on Ampere and later).
    return "bfloat16" if dtype == "float32" else dtype


def _arch_from_layers(source: Any, dtype_override: Optional[str]) -> ModelArch:
    layers: list[AttentionLayer] = []
    for i, spec in enumerate(source.layers):
        where = f"layers[{i}]"  # the counts and sizes are bounded by spec.ModelSource itself
        if spec.softcap:
            _positive_number(spec.softcap, f"{where}.softcap", allow_zero=True)
        if spec.scale is not None:
            _positive_number(spec.scale, f"{where}.scale")
        if spec.num_heads % spec.num_kv_heads:
            raise ConfigError(f"{where}.numKvHeads",
                              f"{spec.num_kv_heads} does not divide numHeads {spec.num_heads}")
        if spec.sliding_window is not None and not 1 <= spec.sliding_window <= MAX_WINDOW:
            raise ConfigError(f"{where}.slidingWindow", f"must be in 1..{MAX_WINDOW} or null, got {spec.sliding_window}")
        reason = _feature_skip_reason(spec.sinks, spec.alibi, spec.kv_sharing, spec.chunked_lookback)
        for _ in range(spec.count):
            layers.append(AttentionLayer(
                index=len(layers), num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads,
                head_size=spec.head_size,
                scale=spec.scale if spec.scale is not None else spec.head_size ** -0.5,
                softcap=float(spec.softcap or 0.0), sliding_window=spec.sliding_window,
                skip_reason=reason, heads_field=f"{where}.numHeads", kv_heads_field=f"{where}.numKvHeads",
            ))
    return ModelArch(
        model_type="explicit", dtype=_resolve_dtype(None, "dtype", dtype_override),
        hidden_size=source.hidden_size, intermediate_size=source.intermediate_size,
        num_hidden_layers=len(layers), attention_layers=layers,
    )


def _feature_skip_reason(sinks: bool, alibi: bool, kv_sharing: bool, chunked: bool) -> Optional[str]:
    for flag, reason in ((sinks, "sinks"), (alibi, "alibi"), (kv_sharing, "kv_sharing"),
                         (chunked, "chunked_lookback")):
        if flag:
            return reason
    return None


def _int_field(cfg: dict, name: str, prefix: str, required: bool = True, minimum: int = 1,
               maximum: int = MAX_DIM) -> Optional[int]:
    value = cfg.get(name)
    if value is None:
        if required:
            raise ConfigError(prefix + name, "is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(prefix + name, f"must be an integer >= {minimum}, got {value!r:.80}")
    if value > maximum:
        raise ConfigError(prefix + name, f"{value!r:.40} is implausibly large (limit {maximum})")
    return value


def _positive_number(value: Any, field_path: str, allow_zero: bool = False) -> float:
    """A finite number (JSON's NaN/Infinity extensions are refused)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
        and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(field_path, f"must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r:.80}")
    return float(value)


def _arch_from_config(root: dict, dtype_override: Optional[str]) -> ModelArch:
    # Multimodal wrappers (Gemma 3, Llava, Mistral3 ...) keep the language model in text_config.
    cfg, prefix = root, ""
    if isinstance(root.get("text_config"), dict):
        cfg, prefix = root["text_config"], "text_config."
    model_type = str(cfg.get("model_type") or root.get("model_type") or "unknown")
    if model_type == "gemma3" and prefix:
        model_type = "gemma3_text"
    cfg = {**_TYPE_DEFAULTS.get(model_type, {}), **cfg}
    for alias, name in _FIELD_ALIASES.get(model_type, {}).items():
        if alias in cfg and name not in cfg:
            cfg[name] = cfg[alias]

    heads = _int_field(cfg, "num_attention_heads", prefix, maximum=MAX_HEADS)
    layers_n = _int_field(cfg, "num_hidden_layers", prefix, maximum=MAX_LAYERS)
    hidden = _int_field(cfg, "hidden_size", prefix, required=False)
    kv = _int_field(cfg, "num_key_value_heads", prefix, required=False, maximum=MAX_HEADS)
    if kv is None:
        kv = 1 if cfg.get("multi_query") else heads
    if heads % kv:
        raise ConfigError(prefix + "num_key_value_heads", f"{kv} does not divide num_attention_heads {heads}")
    head_dim = _int_field(cfg, "head_dim", prefix, required=False, maximum=MAX_HEAD_SIZE)
    if head_dim is None:
        if hidden is None:
            raise ConfigError(prefix + "head_dim", "is missing and hidden_size is missing too; set head_dim")
        if hidden % heads:
            raise ConfigError(prefix + "head_dim",
                              f"is missing and hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        head_dim = hidden // heads
        if head_dim > MAX_HEAD_SIZE:
            raise ConfigError(prefix + "head_dim", f"is missing and hidden_size {hidden} / num_attention_heads "
                                                   f"{heads} = {head_dim} is implausibly large; set head_dim")

    qpas = cfg.get("query_pre_attn_scalar")
    if qpas is not None:
        scale = _positive_number(qpas, prefix + "query_pre_attn_scalar") ** -0.5
    else:
        scale = float(head_dim) ** -0.5

    softcap = cfg.get("attn_logit_softcapping")
    if softcap is None:
        softcap = 0.0
    softcap = _positive_number(softcap, prefix + "attn_logit_softcapping", allow_zero=True)

    windows, skips = _layer_windows(cfg, prefix, model_type, layers_n)

    dtype_value, dtype_field = None, "torch_dtype"
    for where, c in ((prefix, cfg), ("", root)):
        for name in ("torch_dtype", "dtype"):
            if c.get(name) is not None and dtype_value is None:
                dtype_value, dtype_field = c[name], where + name
    dtype = _resolve_dtype(dtype_value, dtype_field, dtype_override)

    layers = [
        AttentionLayer(index=i, num_heads=heads, num_kv_heads=kv, head_size=head_dim, scale=scale,
                       softcap=float(softcap), sliding_window=windows[i], skip_reason=skips[i],
                       heads_field=prefix + "num_attention_heads", kv_heads_field=prefix + "num_key_value_heads")
        for i in range(layers_n)
    ]
    moe = _moe(cfg, prefix)
    intermediate = _int_field(cfg, "intermediate_size", prefix, required=False)
    if moe is not None and not _has_dense_layers(cfg):
        intermediate = None
    quant = root.get("quantization_config") or cfg.get("quantization_config")
    scheme, blocked = _fp8_details(quant)
    return ModelArch(
        model_type=model_type, dtype=dtype, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers_n, attention_layers=layers, moe=moe,
        quantization=_quantization(quant),
        bidirectional=model_type in ENCODER_ONLY_TYPES or cfg.get("is_causal") is False,
        heads_split_by_tp=model_type != "modernbert",
        vision=_vision(root, str(root.get("model_type") or model_type)),
        checkpoint_dtype=normalize_dtype(dtype_value, dtype_field) if dtype_value is not None else None,
        fp8_activation_scheme=scheme, fp8_block_scaled=blocked,
    )


def _vision(root: dict, model_type: str) -> Optional[VisionTower]:
    """The vision tower of the Qwen VL families (the ones whose vLLM code this follows)."""
    vc = root.get("vision_config")
    width_field = _VISION_WIDTH.get(model_type)
    if not isinstance(vc, dict) or width_field is None:
        return None
    prefix = "vision_config."
    heads = _int_field(vc, "num_heads", prefix, maximum=MAX_HEADS)
    width = _int_field(vc, width_field, prefix)
    depth = _int_field(vc, "depth", prefix, required=False, maximum=MAX_LAYERS) or 1
    if width % heads:
        raise ConfigError(prefix + width_field, f"{width} is not divisible by vision_config.num_heads {heads}")
    return VisionTower(heads, width // heads, depth)


def _fp8_details(qc: Any) -> tuple[Optional[str], bool]:
    """(activation scheme, block-scaled weights) of an FP8 quantization_config."""
    if not isinstance(qc, dict):
        return None, False
    scheme = qc.get("activation_scheme")
    blocked = bool(qc.get("weight_block_size"))
    method = str(qc.get("quant_method") or "").lower()
    if method == "modelopt" and scheme is None:
        scheme = "static"  # ModelOpt FP8 checkpoints carry static input scales (modelopt.py:500-504)
    return (str(scheme).lower() if isinstance(scheme, str) else None), blocked


def _layer_windows(cfg: dict, prefix: str, model_type: str, n: int) -> tuple[list[Optional[int]], list[Optional[str]]]:
    """Per layer: sliding window in tokens (None: full) and skip reason (None: plannable)."""
    if model_type == "modernbert":
        return _modernbert_windows(cfg, prefix, n)
    window = cfg.get("sliding_window")
    if window is None:
        window = cfg.get("interleaved_sliding_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW):
        raise ConfigError(prefix + "sliding_window", f"must be an integer in 1..{MAX_WINDOW} or null, got {window!r:.80}")
    if cfg.get("use_sliding_window") is False:  # Qwen2 and friends ship a window they do not use
        window = None

    skips: list[Optional[str]] = [None] * n
    if model_type in _SINK_MODELS:
        skips = ["sinks"] * n
    elif cfg.get("alibi") or cfg.get("position_embedding_type") == "alibi" or model_type in _ALIBI_MODELS \
            or (isinstance(cfg.get("attn_config"), dict) and cfg["attn_config"].get("alibi")):
        skips = ["alibi"] * n
    elif cfg.get("kv_lora_rank"):
        skips = ["mla (kv_lora_rank): not the packed prefill-attention path"] * n
    shared = cfg.get("num_kv_shared_layers") or 0
    if isinstance(shared, int) and 0 < shared <= n:
        for i in range(n - shared, n):
            skips[i] = skips[i] or "kv_sharing"

    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != n:
            raise ConfigError(prefix + "layer_types",
                              f"must be a list of {n} entries (num_hidden_layers), got {types!r:.80}")
        windows: list[Optional[int]] = []
        for i, t in enumerate(types):
            if t == "sliding_attention":
                if cfg.get("sliding_window") is None and cfg.get("interleaved_sliding_window") is None:
                    raise ConfigError(prefix + "sliding_window",
                                      f"layer_types[{i}] is sliding_attention but sliding_window is not set")
                windows.append(window)
            elif t in ("full_attention", "attention"):
                windows.append(None)
            elif t == "chunked_attention":
                windows.append(None)
                skips[i] = skips[i] or "chunked_lookback"
            else:
                windows.append(None)
                skips[i] = skips[i] or f"not softmax attention (layer_types[{i}] = {t!r})"
        return windows, skips

    if window is None:
        return [None] * n, skips
    if cfg.get("attention_chunk_size"):
        return [None] * n, [s or "chunked_lookback" for s in skips]
    pattern = cfg.get("sliding_window_pattern")
    if pattern is None and model_type in ("gemma2",):
        pattern = 2  # Gemma 2 alternates: even layers local, odd layers global
    if pattern is not None:
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
            raise ConfigError(prefix + "sliding_window_pattern", f"must be a positive integer, got {pattern!r}")
        # Gemma 3 / Cohere 2: every pattern-th layer is global, the rest are local.
        return [window if (i + 1) % pattern else None for i in range(n)], skips
    max_window_layers = cfg.get("max_window_layers")
    if cfg.get("use_sliding_window") is True and isinstance(max_window_layers, int):
        # Qwen2 with the window on: layers from max_window_layers upward are windowed.
        return [window if i >= max_window_layers else None for i in range(n)], skips
    return [window] * n, skips


def _modernbert_windows(cfg: dict, prefix: str, n: int) -> tuple[list[Optional[int]], list[Optional[str]]]:
    """ModernBERT: every global_attn_every_n_layers-th layer (from 0) is global; the others
    see local_attention // 2 tokens each way, which vLLM passes as a window of that + 1
    (vllm/model_executor/models/modernbert.py:97-116)."""
    local = _int_field(cfg, "local_attention", prefix, required=False, maximum=MAX_WINDOW) or 128
    every = _int_field(cfg, "global_attn_every_n_layers", prefix, required=False, maximum=MAX_LAYERS) or 3
    return [None if i % every == 0 else local // 2 + 1 for i in range(n)], [None] * n


def _moe(cfg: dict, prefix: str) -> Optional[MoE]:
    experts_field = next((f for f in ("num_local_experts", "num_experts", "n_routed_experts") if cfg.get(f)), None)
    if experts_field is None:
        return None
    experts = _int_field(cfg, experts_field, prefix)
    topk_field = next((f for f in ("num_experts_per_tok", "experts_per_token", "moe_topk") if cfg.get(f)), None)
    if topk_field is None:
        raise ConfigError(prefix + "num_experts_per_tok", f"is missing although {experts_field} is set")
    topk = _int_field(cfg, topk_field, prefix)
    size_field = "moe_intermediate_size" if cfg.get("moe_intermediate_size") else "intermediate_size"
    size = _int_field(cfg, size_field, prefix)
    shared = _int_field(cfg, "shared_expert_intermediate_size", prefix, required=False, minimum=0) or 0
    if not shared and cfg.get("n_shared_experts"):
        shared = (_int_field(cfg, "n_shared_experts", prefix, maximum=MAX_HEADS) or 0) * size
    return MoE(num_experts=experts, experts_per_token=topk, intermediate_size=size,
               shared_expert_intermediate_size=int(shared))


def _has_dense_layers(cfg: dict) -> bool:
    return bool(cfg.get("mlp_only_layers")) or (cfg.get("decoder_sparse_step") or 1) > 1 \
        or bool(cfg.get("first_k_dense_replace"))


def _quantization(qc: Any) -> str:
    if not isinstance(qc, dict):
        return "none"
    method = str(qc.get("quant_method") or "").lower()
    if not method:
        return "none"
    if method == "modelopt":
        algo = str(qc.get("quant_algo") or (qc.get("quantization") or {}).get("quant_algo") or "").upper()
        return {"NVFP4": "nvfp4", "FP8": "fp8"}.get(algo, "modelopt")
    if method == "compressed-tensors":
        for group in (qc.get("config_groups") or {}).values():
            w = (group or {}).get("weights") or {}
            if w.get("type") == "float" and w.get("num_bits") == 8:
                return "fp8"
            if w.get("type") == "float" and w.get("num_bits") == 4:
                return "nvfp4"
        return "compressed-tensors"
    return method
