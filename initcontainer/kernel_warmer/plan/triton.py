"""Arch + tensor-parallel size + dtype -> the Triton variants to compile (pure).

A variant is what vLLM dedupes prefill-attention layers on: per-rank heads and KV heads,
head size, scale, logits softcap, sliding window (q, k) and dtype. Layers the NVFP4
pure-prefill path cannot take (sinks, ALiBi, KV sharing, chunked lookback) are listed with
the reason instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from kernel_warmer.plan import tp as tp_split
from kernel_warmer.plan.model import DTYPES, AttentionLayer, ConfigError, ModelArch
from kernel_warmer.plan.tp import SplitFields

NO_WINDOW = (-1, -1)


@dataclass(frozen=True)
class TritonVariant:
    num_heads: int  # per rank
    num_kv_heads: int  # per rank
    head_size: int
    scale: float
    softcap: float  # 0.0: none
    sliding_window: tuple[int, int]  # (W - 1, 0) for a window of W; (-1, -1): none
    dtype: str

    def to_dict(self) -> dict:
        """Exactly the documented keys (the plan's JSON contract)."""
        return {
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_size": self.head_size,
            "scale": float(self.scale),
            "softcap": float(self.softcap),
            "sliding_window": list(self.sliding_window),
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TritonVariant":
        return cls(int(d["num_heads"]), int(d["num_kv_heads"]), int(d["head_size"]), float(d["scale"]),
                   float(d["softcap"]), tuple(int(x) for x in d["sliding_window"]), str(d["dtype"]))

    @property
    def label(self) -> str:
        w = "" if self.sliding_window == NO_WINDOW else f" win={self.sliding_window[0] + 1}"
        cap = f" softcap={self.softcap:g}" if self.softcap else ""
        return (f"h={self.num_heads} kv={self.num_kv_heads} d={self.head_size} "
                f"scale={self.scale:.4g}{cap}{w} {self.dtype}")


@dataclass(frozen=True)
class SkippedLayer:
    layer: int
    reason: str

    def to_dict(self) -> dict:
        return {"layer": self.layer, "reason": self.reason}


@dataclass(frozen=True)
class TritonPlan:
    variants: list[TritonVariant] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "triton_variants": [v.to_dict() for v in self.variants],
            "skipped_layers": [s.to_dict() for s in self.skipped],
        }


def per_rank_heads(layer: AttentionLayer, tp: int) -> tuple[int, int]:
    """The layer's heads on one rank, errors naming the layer's own fields."""
    return tp_split.per_rank_heads(layer.num_heads, layer.num_kv_heads, tp,
                                   SplitFields(layer.heads_field, layer.kv_heads_field, ConfigError))


def window_pair(window: Optional[int]) -> tuple[int, int]:
    return NO_WINDOW if window is None else (window - 1, 0)


def plan_triton(arch: ModelArch, tensor_parallel_size: int = 1, dtype: Optional[str] = None) -> TritonPlan:
    """Deduplicated variants in first-seen layer order, plus the skipped layers."""
    if tensor_parallel_size < 1:
        raise ConfigError("tensor_parallel_size", f"must be >= 1, got {tensor_parallel_size}")
    dt = arch.dtype if dtype in (None, "auto") else dtype
    if dt not in DTYPES:
        raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}, got {dt!r}")
    seen: dict[TritonVariant, None] = {}
    skipped: list[SkippedLayer] = []
    for layer in arch.attention_layers:
        if layer.skip_reason:
            skipped.append(SkippedLayer(layer.index, layer.skip_reason))
            continue
        heads, kv = per_rank_heads(layer, tensor_parallel_size)
        v = TritonVariant(heads, kv, layer.head_size, float(layer.scale), float(layer.softcap or 0.0),
                          window_pair(layer.sliding_window), dt)
        seen.setdefault(v, None)
    return TritonPlan(list(seen), skipped)
