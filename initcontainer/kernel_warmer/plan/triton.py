"""Which of vLLM's calls of ``context_attention_fwd`` a model and its serving command reach,
and each call's exact arguments (pure; runs on a CPU).

vLLM's prefill kernel (``vllm/v1/attention/ops/triton_prefill_attention.py``) takes its
windows, causality and sinks as ``tl.constexpr``: a call site that passes ``None`` for a
window (mapped to 0) compiles another kernel than one that passes ``-1``. So a variant is
the layer's shape *and* the call site's way of calling, and the provider launches it with
exactly :meth:`TritonVariant.call_kwargs`. The sites (vLLM 0.33.0, NVIDIA; the same arguments
in every release 0.26-0.34, kernel_warmer/versions.py; docs/VLLM.md):

``triton_attn.encoder``  ``TritonAttentionImpl._forward_encoder_attention``
    (``vllm/v1/attention/backends/triton_attn.py:782-795``): bidirectional (encoder-only)
    layers on TRITON_ATTN: ``is_causal=False``, the impl's raw window tuple
    (``(-1, -1)``, or ``(W-1, W-1)`` for an encoder window, ``:503-508``), ``sinks``.
``vit.triton``  ``triton_attn_wrapper`` (``vllm/v1/attention/ops/vit_attn_wrappers.py:187-199``):
    a vision tower on ``--mm-encoder-attn-backend TRITON_ATTN``: ``is_causal=False``,
    ``sliding_window_q=None, sliding_window_k=None``, ``softmax_scale``.
``fork.nvfp4_prefill``  the NVFP4 pure-prefill path of the fork this project started from
    (TRITON_ATTN with ``--kv-cache-dtype nvfp4``; not in upstream vLLM): causal, the raw
    decoder tuple ``(W-1, 0)`` / ``(-1, -1)``, plus ``softcap`` where the signature takes it.

Decoder layers reach no upstream site: TRITON_ATTN prefill runs ``unified_attention``
(``triton_attn.py:700-738``), and the default backend on Hopper is FLASH_ATTN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from kernel_warmer.engine import VLLM_RELEASES
from kernel_warmer import heads as tp_split
from kernel_warmer.plan.model import DTYPES, AttentionLayer, ConfigError, ModelArch, VisionTower
from kernel_warmer.heads import SplitFields
from kernel_warmer.spec import EngineSection

NO_WINDOW = (-1, -1)
ENCODER, VIT, FORK = "triton_attn.encoder", "vit.triton", "fork.nvfp4_prefill"


@dataclass(frozen=True)
class CallSite:
    name: str
    source: str
    is_causal: bool
    passes_sinks: bool
    passes_softcap: bool


SITES = {
    ENCODER: CallSite(ENCODER, "vllm/v1/attention/backends/triton_attn.py:782-795", False, True, False),
    VIT: CallSite(VIT, "vllm/v1/attention/ops/vit_attn_wrappers.py:187-199", False, False, False),
    FORK: CallSite(FORK, "fork-only: TRITON_ATTN + nvfp4 KV cache (the seed's pure-prefill path)", True, False,
                   True),
}
# KV-cache dtypes TRITON_ATTN's encoder path accepts (triton_attn.py:770-773 raises for the rest).
UNQUANTIZED_KV = ("auto", "float16", "bfloat16")
# Model types vLLM never serves in float16 (vllm/config/model.py:2397-2409).
NO_FP16 = ("gemma2", "gemma3", "gemma3_text", "glm4")


@dataclass(frozen=True)
class TritonVariant:
    num_heads: int  # per rank
    num_kv_heads: int  # per rank
    head_size: int
    scale: float
    softcap: float  # 0.0: none; passed only by a site whose signature takes it
    sliding_window: Optional[tuple[int, int]]  # exactly what the site passes; None: it passes None
    dtype: str
    site: str = FORK
    is_causal: bool = True
    sinks: bool = False

    def call_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the call site passes (besides tensors and lengths);
        ``sinks`` is a flag here: the launcher passes a per-head tensor for True."""
        site = SITES[self.site]
        window = self.sliding_window
        kw: dict[str, Any] = {
            "is_causal": self.is_causal,
            "softmax_scale": self.scale,
            "sliding_window_q": window[0] if window is not None else None,
            "sliding_window_k": window[1] if window is not None else None,
        }
        if site.passes_sinks:
            kw["sinks"] = self.sinks
        if site.passes_softcap:
            kw["softcap"] = self.softcap
        return kw

    def to_dict(self) -> dict:
        """Exactly the documented keys (the plan's JSON contract)."""
        return {
            "site": self.site,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_size": self.head_size,
            "scale": float(self.scale),
            "softcap": float(self.softcap),
            "sliding_window": None if self.sliding_window is None else list(self.sliding_window),
            "is_causal": self.is_causal,
            "sinks": self.sinks,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TritonVariant":
        window = d.get("sliding_window")
        return cls(int(d["num_heads"]), int(d["num_kv_heads"]), int(d["head_size"]), float(d["scale"]),
                   float(d["softcap"]), None if window is None else tuple(int(x) for x in window),
                   str(d["dtype"]), str(d.get("site", FORK)), bool(d.get("is_causal", True)),
                   bool(d.get("sinks", False)))

    @property
    def label(self) -> str:
        w = self.sliding_window
        win = " win=None" if w is None else ("" if w == NO_WINDOW else f" win=({w[0]},{w[1]})")
        cap = f" softcap={self.softcap:g}" if self.softcap and SITES[self.site].passes_softcap else ""
        sinks = " sinks" if self.sinks else ""
        return (f"{self.site} h={self.num_heads} kv={self.num_kv_heads} d={self.head_size} "
                f"scale={self.scale:.4g}{cap}{win}{sinks} {'causal' if self.is_causal else 'bidir'} {self.dtype}")


@dataclass(frozen=True)
class SkippedLayer:
    layer: int  # -1: a whole part of the model (e.g. its vision tower)
    reason: str

    def to_dict(self) -> dict:
        return {"layer": self.layer, "reason": self.reason}


@dataclass(frozen=True)
class TritonPlan:
    variants: list[TritonVariant] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    # Why a part of the model reaches no call site ("decoder attention runs on FLASH_ATTN ...").
    unreached: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "triton_variants": [v.to_dict() for v in self.variants],
            "skipped_layers": [s.to_dict() for s in self.skipped],
            "unreached": list(self.unreached),
        }


# --- which backend vLLM picks (vllm/platforms/cuda.py, SM90 priorities) -------------------

def _flash_attn_takes(head_size: int, dtype: str, kv_cache_dtype: str = "auto") -> bool:
    """flash_attn.py:286-510 (FA3 on SM90): fp16/bf16, head size %8 and <= 256, KV fp8_e4m3 at most."""
    return dtype in ("float16", "bfloat16") and head_size % 8 == 0 and head_size <= 256 \
        and kv_cache_dtype in ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3")


def text_backend(engine: EngineSection, head_size: int, dtype: str, bidirectional: bool) -> str:
    """The backend of the text layers: the command's, else vLLM's first valid one on SM90
    (FLASH_ATTN, FLASHINFER (decoder only), TRITON_ATTN)."""
    if engine.attention_backend:
        return engine.attention_backend
    kv = engine.kv_cache_dtype
    if _flash_attn_takes(head_size, dtype, kv):
        return "FLASH_ATTN"
    flashinfer_ok = dtype in ("float16", "bfloat16") and head_size in (64, 128, 256, 512) \
        and kv in ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "nvfp4")
    if not bidirectional and flashinfer_ok:
        return "FLASHINFER"
    return "TRITON_ATTN" if head_size >= 32 else "FLEX_ATTENTION"


def vit_backend(engine: EngineSection, head_size: int, dtype: str) -> str:
    """platforms/cuda.py:538-574: the flag's, else FLASH_ATTN, TRITON_ATTN, TORCH_SDPA."""
    if engine.mm_encoder_attn_backend:
        return engine.mm_encoder_attn_backend
    if _flash_attn_takes(head_size, dtype):
        return "FLASH_ATTN"
    return "TRITON_ATTN" if head_size >= 32 else "TORCH_SDPA"


def serving_dtype(arch: ModelArch, dtype: Optional[str], engine: EngineSection, bidirectional: bool) -> str:
    """``--dtype``, else vLLM's "auto" (config/model.py:2423-2522): a float32 (or unnamed)
    checkpoint runs in float16 for pooling models and bfloat16 otherwise."""
    if dtype not in (None, "auto"):
        return dtype
    if arch.checkpoint_dtype not in (None, "float32"):
        return arch.checkpoint_dtype
    pooling = bidirectional or engine.runner == "pooling"
    return "float16" if pooling and arch.model_type not in NO_FP16 else "bfloat16"


# --- the plan -------------------------------------------------------------------------------

def per_rank_heads(layer: AttentionLayer, tp: int) -> tuple[int, int]:
    """The layer's heads on one rank, errors naming the layer's own fields."""
    return tp_split.per_rank_heads(layer.num_heads, layer.num_kv_heads, tp,
                                   SplitFields(layer.heads_field, layer.kv_heads_field, ConfigError))


def window_pair(window: Optional[int], bidirectional: bool = False) -> tuple[int, int]:
    """The impl's tuple for a window of W tokens (triton_attn.py:503-508)."""
    if window is None:
        return NO_WINDOW
    return (window - 1, window - 1) if bidirectional else (window - 1, 0)


def _text_site(arch: ModelArch, engine: EngineSection, dtype: str, bidirectional: bool) -> tuple[Optional[str], str]:
    """(site, "") for the text layers, or (None, why none is reached)."""
    layers = [a for a in arch.attention_layers if not a.skip_reason]
    if not layers:
        return None, "no text layer takes the prefill kernel"
    backend = text_backend(engine, layers[0].head_size, dtype, bidirectional)
    where = "args --attention-backend" if engine.attention_backend else "vLLM's automatic choice on SM90"
    if bidirectional:
        if backend != "TRITON_ATTN":
            return None, f"encoder attention runs on {backend} ({where}), which does not call context_attention_fwd"
        if engine.kv_cache_dtype not in UNQUANTIZED_KV:
            return None, (f"vLLM refuses a quantized KV cache ({engine.kv_cache_dtype}) in encoder attention "
                          "(triton_attn.py:770-773)")
        return ENCODER, ""
    if backend == "TRITON_ATTN" and engine.kv_cache_dtype.startswith("nvfp4"):
        return FORK, ""
    return None, (f"decoder attention runs on {backend} ({where}); vLLM {VLLM_RELEASES} calls "
                  "context_attention_fwd from no decoder path (TRITON_ATTN prefill runs unified_attention)")


def _text_variants(arch: ModelArch, tp: int, dtype: str, site: str, bidirectional: bool, seen: dict) -> None:
    for layer in arch.attention_layers:
        if layer.skip_reason:
            continue
        heads, kv = per_rank_heads(layer, tp) if arch.heads_split_by_tp else (layer.num_heads, layer.num_kv_heads)
        v = TritonVariant(heads, kv, layer.head_size, float(layer.scale), float(layer.softcap or 0.0),
                          window_pair(layer.sliding_window, bidirectional), dtype, site=site,
                          is_causal=SITES[site].is_causal)
        seen.setdefault(v, None)


def _vit_variant(vision: VisionTower, engine: EngineSection, tp: int, dtype: str) -> TritonVariant:
    tp_vit = 1 if engine.mm_encoder_tp_mode == "data" else tp
    if vision.num_heads % tp_vit:
        raise ConfigError(vision.heads_field, f"{vision.num_heads} vision heads are not divisible by tensor-parallel "
                                              f"size {tp_vit}; use --mm-encoder-tp-mode data or another -tp")
    heads = vision.num_heads // tp_vit
    return TritonVariant(heads, heads, vision.head_size, vision.head_size ** -0.5, 0.0, None, dtype,
                         site=VIT, is_causal=False)


def plan_triton(arch: ModelArch, tensor_parallel_size: int = 1, dtype: Optional[str] = None,
                engine: Optional[EngineSection] = None) -> TritonPlan:
    """The variants of every reached call site (deduplicated, first-seen order), the layers
    skipped, and why a part of the model reaches no site. ``engine``: the serving command's
    settings (None: ``vllm serve <model>`` with vLLM's defaults); ``dtype``: ``--dtype``."""
    if tensor_parallel_size < 1:
        raise ConfigError("tensor_parallel_size", f"must be >= 1, got {tensor_parallel_size}")
    engine = engine or EngineSection()
    bidirectional = bool(arch.bidirectional or engine.bidirectional)
    dtype = serving_dtype(arch, dtype, engine, bidirectional)
    if dtype not in DTYPES:
        raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    seen: dict[TritonVariant, None] = {}
    unreached: list[str] = []
    skipped = [SkippedLayer(a.index, a.skip_reason) for a in arch.attention_layers if a.skip_reason]
    if arch.heads_split_by_tp:  # vLLM refuses a TP that does not split the heads, site or not
        for layer in arch.attention_layers:
            per_rank_heads(layer, tensor_parallel_size)
    site, why = _text_site(arch, engine, dtype, bidirectional)
    if site:
        _text_variants(arch, tensor_parallel_size, dtype, site, bidirectional, seen)
    else:
        unreached.append(f"text layers: {why}")
    if arch.vision is not None:
        backend = vit_backend(engine, arch.vision.head_size, dtype)
        if backend == "TRITON_ATTN":
            seen.setdefault(_vit_variant(arch.vision, engine, tensor_parallel_size, dtype), None)
        else:
            unreached.append(f"vision tower: runs on {backend}, which does not call context_attention_fwd "
                             "(--mm-encoder-attn-backend TRITON_ATTN would)")
    return TritonPlan(list(seen), skipped, unreached)
