"""Which FlashInfer ops to autotune, at which per-rank shapes (pure; runs on a CPU).

Every linear layer of one tensor-parallel rank becomes a GEMM ``out[M, n] = x[M, k] @ W``:

    qkv      n = (heads/tp + 2 * kv_heads_per_rank) * head_size   k = hidden
    o        n = hidden                                           k = heads/tp * head_size
    gate_up  n = 2 * intermediate/tp                              k = hidden
    down     n = hidden                                           k = intermediate/tp
    experts  (CUTLASS fused MoE) n = 2 * moe_intermediate/tp      k = hidden

``kv_heads_per_rank`` follows vLLM: when tp >= kv heads, each rank holds one replicated
KV head (tp must then be a multiple of the KV-head count); otherwise kv_heads / tp.

M is the only dynamic dimension FlashInfer tunes: ``choose_one`` profiles every bucket of
``get_hybrid_num_tokens_buckets(M)`` (1, 2, 4 .. 256, then steps of 256 to 2048, of 512 to
4096, then powers of two, and M itself), so one call at M = m_max covers every bucket up
to m_max. GEMMs map a runtime M to a bucket by rounding *up* without a cap
(``map_to_hybrid_bucket_uncapped``), so a non-bucket maximum (say 3000) would leave
runtime sizes 2561..3000 mapping to the untuned bucket 3072: ``gemm_tuning_m`` rounds the
GEMM m_max up to its bucket. The fused MoE clamps to its own ``tune_max_num_tokens``,
which must equal the server's value, so it keeps ``max_num_batched_tokens`` as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kernel_warmer.errors import FieldError
from kernel_warmer.plan import tp as tp_split
from kernel_warmer.plan.model import ModelArch
from kernel_warmer.plan.tp import SplitFields

GEMM_OP = {"none": "bf16_gemm", "fp8": "fp8_gemm", "nvfp4": "fp4_gemm"}
MOE_OP = "cutlass_fused_moe"

# Lowest SM that runs each op in FlashInfer 0.6.18 (gemm_base.py / fused_moe requirements).
MIN_SM = {"bf16_gemm": 80, "fp8_gemm": 89, "fp4_gemm": 100}
MOE_MIN_SM = {"none": 80, "fp8": 89, "nvfp4": 100}

# FlashInfer's hybrid bucket phases (flashinfer/fused_moe/utils.py).
_PHASE1_END, _PHASE2_STEP, _PHASE2_END, _PHASE3_STEP, _PHASE3_END = 256, 256, 2048, 512, 4096


class PlanError(FieldError):
    """The model cannot be split over the requested ranks; names the field to change."""


@dataclass(frozen=True)
class AutoTuneOp:
    op: str
    n: int
    k: int
    m_max: int
    layer: str  # which projection(s) share this shape, "+"-joined after dedupe

    def to_dict(self) -> dict:
        return {"op": self.op, "n": self.n, "k": self.k, "m_max": self.m_max, "layer": self.layer}


@dataclass(frozen=True)
class SkippedOp:
    op: str
    n: int
    k: int
    layer: str
    reason: str

    def to_dict(self) -> dict:
        return {"op": self.op, "n": self.n, "k": self.k, "layer": self.layer, "reason": self.reason}


def _next_pow2(x: int) -> int:
    return 1 << (x - 1).bit_length()


def gemm_tuning_m(max_tokens: int) -> int:
    """The hybrid bucket that ``max_tokens`` rounds up to (FlashInfer's uncapped mapper)."""
    if max_tokens < 1:
        raise PlanError("flashinfer.maxNumBatchedTokens", f"must be >= 1, got {max_tokens}")
    if max_tokens <= _PHASE1_END:
        return _next_pow2(max_tokens)
    if max_tokens <= _PHASE2_END:
        return -(-max_tokens // _PHASE2_STEP) * _PHASE2_STEP
    if max_tokens <= _PHASE3_END:
        return -(-max_tokens // _PHASE3_STEP) * _PHASE3_STEP
    return _next_pow2(max_tokens)


# FlashInfer's plan names the one field it takes: the tensor-parallel size.
TP_FIELDS = SplitFields("tensorParallelSize", "tensorParallelSize", PlanError)


def kv_heads_per_rank(num_kv_heads: int, tp: int) -> int:
    return tp_split.kv_heads_per_rank(num_kv_heads, tp, TP_FIELDS)


def _split(total: int, tp: int, what: str) -> int:
    if total % tp:
        raise PlanError("tensorParallelSize", f"{what}={total} does not split evenly over {tp} ranks")
    return total // tp


def _linear_shapes(arch: ModelArch, tp: int) -> list[tuple[str, int, int]]:
    """(layer, n, k) of every dense linear layer on one rank, model order."""
    hidden = arch.hidden_size
    shapes: list[tuple[str, int, int]] = []
    seen_attn: set[tuple[int, int, int]] = set()
    for layer in arch.attention_layers:
        key = (layer.num_heads, layer.num_kv_heads, layer.head_size)
        if key in seen_attn:
            continue
        seen_attn.add(key)
        heads, kv = tp_split.per_rank_heads(layer.num_heads, layer.num_kv_heads, tp, TP_FIELDS)
        shapes.append(("qkv", (heads + 2 * kv) * layer.head_size, hidden))
        shapes.append(("o", hidden, heads * layer.head_size))
    if arch.intermediate_size:
        inter = _split(arch.intermediate_size, tp, "intermediate_size")
        shapes.append(("gate_up", 2 * inter, hidden))
        shapes.append(("down", hidden, inter))
    if arch.moe and arch.moe.shared_expert_intermediate_size:
        inter = _split(arch.moe.shared_expert_intermediate_size, tp, "shared_expert_intermediate_size")
        shapes.append(("shared_expert.gate_up", 2 * inter, hidden))
        shapes.append(("shared_expert.down", hidden, inter))
    return shapes


def resolve_quantization(quantization: str, arch: ModelArch) -> str:
    return arch.quantization if quantization == "auto" else quantization


def plan_ops(
    arch: ModelArch,
    tensor_parallel_size: int,
    max_num_batched_tokens: int,
    quantization: str,
    sm: Optional[int],
) -> tuple[list[AutoTuneOp], list[SkippedOp]]:
    """The ops one rank tunes, and those it cannot (with why). ``sm=None``: GPU unknown."""
    if tensor_parallel_size < 1:
        raise PlanError("tensorParallelSize", f"must be >= 1, got {tensor_parallel_size}")
    quant = resolve_quantization(quantization, arch)
    tp = tensor_parallel_size
    planned: list[AutoTuneOp] = []
    skipped: list[SkippedOp] = []

    if not arch.hidden_size:
        skipped.append(SkippedOp("*", 0, 0, "*", "hidden size unknown: set model.hiddenSize (or use a config.json)"))
        return planned, skipped

    gemm = GEMM_OP.get(quant)
    if quant == "none" and arch.dtype != "bfloat16":
        gemm_reason: Optional[str] = f"FlashInfer has no autotuned {arch.dtype} GEMM (mm_bf16 takes bfloat16 only)"
    elif gemm is None:
        gemm_reason = f"quantization {quant!r} has no FlashInfer autotuned GEMM"
    elif sm is not None and sm < MIN_SM[gemm]:
        gemm_reason = f"{gemm} needs SM{MIN_SM[gemm]}+, this GPU is SM{sm}"
    else:
        gemm_reason = None
    gemm_name = gemm or f"{quant}_gemm"
    m_gemm = gemm_tuning_m(max_num_batched_tokens)

    merged: dict[tuple[str, int, int], list[str]] = {}
    for layer, n, k in _linear_shapes(arch, tp):
        merged.setdefault((gemm_name, n, k), []).append(layer)

    if arch.moe:
        n = 2 * _split(arch.moe.intermediate_size, tp, "moe_intermediate_size")
        merged.setdefault((MOE_OP, n, arch.hidden_size), []).append("experts")

    for (op, n, k), layers in merged.items():
        label = "+".join(layers)
        if op == MOE_OP:
            need = MOE_MIN_SM.get(quant)
            if need is None:
                reason = f"CUTLASS fused MoE is not tuned for quantization {quant!r}"
            elif quant == "none" and arch.dtype not in ("bfloat16", "float16"):
                reason = f"CUTLASS fused MoE takes bfloat16/float16 activations, model is {arch.dtype}"
            elif sm is not None and sm < need:
                reason = f"CUTLASS fused MoE ({quant}) needs SM{need}+, this GPU is SM{sm}"
            else:
                planned.append(AutoTuneOp(op, n, k, max_num_batched_tokens, label))
                continue
            skipped.append(SkippedOp(op, n, k, label, reason))
        elif gemm_reason:
            skipped.append(SkippedOp(op, n, k, label, gemm_reason))
        else:
            planned.append(AutoTuneOp(op, n, k, m_gemm, label))
    return planned, skipped
