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
from kernel_warmer import heads as tp_split
from kernel_warmer.plan.model import ModelArch
from kernel_warmer.heads import SplitFields
from kernel_warmer.gpu import GpuFacts
from kernel_warmer.spec import EngineSection, WarmerSpec
from kernel_warmer.versions import VllmFacts

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
    # fused MoE only: how vLLM calls it (MoeCall): "bf16" | "fp8_tensor" | "fp8_block", the
    # tp/ep sizes it passes and the experts each rank holds
    mode: str = ""
    tp_size: int = 1
    ep_size: int = 1
    local_experts: int = 0

    def to_dict(self) -> dict:
        d = {"op": self.op, "n": self.n, "k": self.k, "m_max": self.m_max, "layer": self.layer}
        if self.op == MOE_OP:
            d.update(mode=self.mode, tp_size=self.tp_size, ep_size=self.ep_size, local_experts=self.local_experts)
        return d

    def rank_keys(self) -> list[tuple[int, int]]:
        """(tp_rank, ep_rank) of every rank whose tactics FlashInfer keys apart."""
        if self.op != MOE_OP:
            return [(0, 0)]
        return [(t, e) for e in range(self.ep_size) for t in range(self.tp_size)]


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


def plan_every_op(
    arch: ModelArch,
    tensor_parallel_size: int,
    max_num_batched_tokens: int,
    quantization: str,
    sm: Optional[int],
) -> tuple[list[AutoTuneOp], list[SkippedOp]]:
    """Every op FlashInfer *can* tune for these shapes, whatever vLLM calls (``sm=None``:
    GPU unknown). Only the benchmarks use it, to compare with figures measured on the bf16
    GEMMs before the plan followed vLLM; the warmer uses :func:`plan_ops`."""
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
    gemm_name = gemm or f"{quant}_gemm"  # plan_every_op: bench-only
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
                planned.append(AutoTuneOp(op, n, k, max_num_batched_tokens, label,
                                          mode="bf16" if quant == "none" else "fp8_tensor", tp_size=tp,
                                          local_experts=arch.moe.num_experts))
                continue
            skipped.append(SkippedOp(op, n, k, label, reason))
        elif gemm_reason:
            skipped.append(SkippedOp(op, n, k, label, gemm_reason))
        else:
            planned.append(AutoTuneOp(op, n, k, m_gemm, label))
    return planned, skipped


# --- which FlashInfer ops vLLM calls (vLLM 0.33.0, FlashInfer 0.6.18; docs/VLLM.md) -----------

HOPPER = 90
NO_FLASHINFER_DENSE_SM90 = {
    "none": "vLLM runs unquantized dense layers through torch (cuBLAS) on Hopper "
            "(vllm/model_executor/layers/utils.py:682-717)",
    "fp8": "vLLM runs FP8 per-tensor dense layers through its own CUTLASS scaled-mm on Hopper "
           "(FlashInfer's bmm_fp8 kernel needs SM100, kernels/linear/scaled_mm/flashinfer.py:50-51)",
    "fp8_block": "FP8 block-scale dense layers call fp8_blockscale_gemm_sm90 (M < 32) and DeepGEMM on Hopper; "
                 "neither is autotuned (kernels/linear/scaled_mm/flashinfer.py:149-195)",
    "nvfp4": "NVFP4 dense layers run Marlin on Hopper (FlashInfer's NVFP4 GEMMs need SM100)",
}


@dataclass(frozen=True)
class MoeCall:
    """How vLLM's FlashInferExperts calls cutlass_fused_moe on every rank
    (vllm/model_executor/layers/fused_moe/experts/flashinfer_cutlass_moe.py:365-389)."""

    mode: str  # "bf16" | "fp8_tensor" | "fp8_block"
    tp_size: int
    ep_size: int
    local_experts: int
    n: int  # w1's rows per rank: 2 * intermediate / tp_size (padded to 16 for fp8_tensor)


def _moe_mode(arch: ModelArch, quant: str, sm: int, engine: EngineSection) -> tuple[Optional[str], str]:
    """(mode, "") when vLLM runs the experts through FlashInfer's CUTLASS fused MoE,
    else (None, why not) (vllm/model_executor/layers/fused_moe/oracle/*.py)."""
    backend, world_ep = engine.moe_backend, engine.enable_expert_parallel
    chosen = backend == "flashinfer_cutlass"
    if backend not in ("auto", "flashinfer_cutlass"):
        return None, f"--moe-backend {backend} does not call FlashInfer's autotuned CUTLASS MoE"
    if quant == "none":
        if chosen:
            return "bf16", ""
        if sm >= 100:
            return None, ("vLLM's default unquantized MoE on SM100 is FlashInfer TRT-LLM (trtllm_bf16_moe), "
                          "which this warmer does not tune yet")
        return None, ("vLLM runs unquantized MoE through Triton on Hopper (fused_moe/oracle/unquantized.py:68-80); "
                      "--moe-backend flashinfer_cutlass selects FlashInfer")
    if quant == "fp8" and arch.fp8_block_scaled:
        if sm != HOPPER:
            return None, "FlashInfer's FP8 block-scale CUTLASS MoE runs on SM90 only"
        if chosen or world_ep:
            return "fp8_block", ""
        return None, ("vLLM runs FP8 block-scale MoE through Triton with tensor parallelism on Hopper "
                      "(oracle/fp8.py:124-134); --enable-expert-parallel or --moe-backend flashinfer_cutlass "
                      "selects FlashInfer")
    if quant == "fp8":
        if arch.fp8_activation_scheme == "static":
            return "fp8_tensor", ""
        return None, ("FP8 MoE with dynamic activation scales runs Triton (FlashInfer's CUTLASS MoE takes static "
                      "per-tensor scales only, online/fp8.py:503-509)")
    return None, f"{quant} MoE does not run FlashInfer's autotuned CUTLASS MoE on SM{sm}"


def moe_call(arch: ModelArch, mode: str, tp: int, engine: EngineSection) -> MoeCall:
    """tp/ep sizes and per-rank weight shape (fused_moe/config.py:1198-1245): without expert
    parallelism the experts are split over every TP x DP rank, with it they are spread."""
    moe = arch.moe
    world = tp * engine.data_parallel_size
    if engine.enable_expert_parallel:
        if moe.num_experts % world:
            raise PlanError("engine.enableExpertParallel",
                            f"{moe.num_experts} experts do not spread evenly over {world} ranks")
        return MoeCall(mode, 1, world, moe.num_experts // world, 2 * moe.intermediate_size)
    inter = _split(moe.intermediate_size, world, "moe_intermediate_size")
    if mode == "fp8_tensor":
        inter = -(-inter // 16) * 16  # quantization/utils/flashinfer_utils.py:612-620
    return MoeCall(mode, world, 1, moe.num_experts, 2 * inter)


def _dense_op(quant: str, sm: int, engine: EngineSection, fp8_block: bool) -> tuple[Optional[str], str]:
    """(op, "") when vLLM tunes a FlashInfer GEMM for the dense layers, else (None, why not)."""
    if sm < 100:
        key = "fp8_block" if quant == "fp8" and fp8_block else quant
        return None, NO_FLASHINFER_DENSE_SM90.get(key, f"{quant} dense layers call no FlashInfer autotuned GEMM")
    if quant == "none":
        if engine.linear_backend == "flashinfer_cutedsl":
            return "bf16_gemm", ""
        return None, "vLLM runs unquantized dense layers through torch unless --linear-backend flashinfer_cutedsl"
    if quant == "fp8":
        if fp8_block:
            return None, "FP8 block-scale dense layers run DeepGEMM on SM100"
        return "fp8_gemm", ""
    if quant == "nvfp4":
        if engine.linear_backend in ("flashinfer_cutlass", "flashinfer_trtllm", "flashinfer_cudnn"):
            return "fp4_gemm", ""
        return None, "vLLM skips tuning fp4_gemm behind its default CuTe-DSL NVFP4 kernel (warmup/kernel_warmup.py:299-315)"
    return None, f"{quant} dense layers call no FlashInfer autotuned GEMM"


def plan_ops(arch: ModelArch, tensor_parallel_size: int, max_num_batched_tokens: int, quantization: str,
                  sm: Optional[int], engine: Optional[EngineSection] = None
                  ) -> tuple[list[AutoTuneOp], list[SkippedOp]]:
    """Exactly the autotuned FlashInfer ops vLLM's own tuning pass reaches for this GPU,
    model and serving command (``sm=None``: Hopper assumed). None when it reaches none."""
    engine = engine or EngineSection()
    if not engine.flashinfer_autotune:
        return [], [SkippedOp("*", 0, 0, "*", "the serving command turns vLLM's FlashInfer autotune off "
                                              "(--no-enable-flashinfer-autotune or -O0): the server tunes nothing")]
    if not arch.hidden_size:
        return [], [SkippedOp("*", 0, 0, "*", "hidden size unknown: set model.hiddenSize (or use a config.json)")]
    sm_ = HOPPER if sm is None else sm
    quant = resolve_quantization(quantization, arch)
    planned: list[AutoTuneOp] = []
    skipped: list[SkippedOp] = []
    op, why = _dense_op(quant, sm_, engine, arch.fp8_block_scaled)
    m_gemm = gemm_tuning_m(max_num_batched_tokens)
    # a skipped layer is named by the GEMM it would be (bf16_gemm for unquantized), never "none_gemm"
    name_if_skipped = GEMM_OP.get(quant, f"{quant}_gemm")
    for (name, n, k), layers in _merged_linear_shapes(arch, tensor_parallel_size, op or name_if_skipped).items():
        if op:
            planned.append(AutoTuneOp(name, n, k, m_gemm, "+".join(layers)))
        else:
            skipped.append(SkippedOp(name, n, k, "+".join(layers), why))
    if arch.moe:
        mode, why = _moe_mode(arch, quant, sm_, engine)
        if mode:
            call = moe_call(arch, mode, tensor_parallel_size, engine)
            planned.append(AutoTuneOp(MOE_OP, call.n, arch.hidden_size, max_num_batched_tokens, "experts",
                                      mode=mode, tp_size=call.tp_size, ep_size=call.ep_size,
                                      local_experts=call.local_experts))
        else:
            skipped.append(SkippedOp(MOE_OP, 0, arch.hidden_size, "experts", why))
    return planned, skipped


def _merged_linear_shapes(arch: ModelArch, tp: int, op: str) -> dict[tuple[str, int, int], list[str]]:
    merged: dict[tuple[str, int, int], list[str]] = {}
    for layer, n, k in _linear_shapes(arch, tp):
        merged.setdefault((op, n, k), []).append(layer)
    return merged


# --- FlashInfer kernels vLLM calls that compile on first use but are not autotuned --------

FP8_BLOCK_OP = "fp8_blockscale_gemm_sm90"
# vLLM sends M < 32 to FlashInfer's swap-AB kernel and M >= 32 to DeepGEMM
# (vllm/model_executor/kernels/linear/scaled_mm/flashinfer.py:230-280, torch.cond on M)
FP8_BLOCK_M_BELOW = 32
# DeepGEMM's N/K alignment, which vLLM checks before choosing the kernel (flashinfer.py:230-251)
FP8_BLOCK_N_MULTIPLE, FP8_BLOCK_K_MULTIPLE = 64, 128


@dataclass(frozen=True)
class JitCall:
    """A FlashInfer op the server calls with this (n, k) at each of ``m_values``: nothing to
    tune, but its module and its per-shape DeepGEMM kernels compile on the first call."""

    op: str
    n: int
    k: int
    m_values: tuple[int, ...]
    layer: str

    def to_dict(self) -> dict:
        return {"op": self.op, "n": self.n, "k": self.k, "m_values": list(self.m_values), "layer": self.layer}


def _fp8_block_dense_off(arch: ModelArch, quant: str, sm: int, engine: EngineSection) -> Optional[str]:
    """Why vLLM does not run FlashInfer's FP8 block-scale GEMM here (None: it does).
    vLLM 0.33 tries FlashInferFp8DeepGEMMDynamicBlockScaledKernel first for block-scaled FP8
    on CUDA (kernels/linear/__init__.py:498-509); it needs FlashInfer's SM90 kernel
    (utils/flashinfer.py:1187-1202) and DeepGEMM, which the vLLM wheel vendors
    (vllm.third_party.deep_gemm, utils/import_utils.py:512-519)."""
    if not (quant == "fp8" and arch.fp8_block_scaled):
        return "not an FP8 block-scale model"
    if sm != HOPPER:
        return f"FlashInfer's fp8_blockscale_gemm_sm90 runs on SM90 only (this GPU: SM{sm})"
    if not engine.flashinfer_blockscale_fp8_gemm:
        return "VLLM_BLOCKSCALE_FP8_GEMM_FLASHINFER=0 in the serving container: vLLM runs DeepGEMM or CUTLASS"
    if not engine.deep_gemm:
        return "VLLM_USE_DEEP_GEMM=0 in the serving container: vLLM runs CUTLASS block-scale GEMMs"
    if arch.dtype != "bfloat16":
        return f"the model runs in {arch.dtype}; vLLM uses FlashInfer's FP8 block-scale GEMM for bfloat16 only"
    return None


def plan_jit_calls(arch: ModelArch, tensor_parallel_size: int, quantization: str, sm: Optional[int],
                   engine: Optional[EngineSection] = None) -> tuple[list[JitCall], list[SkippedOp]]:
    """The non-autotuned FlashInfer calls whose kernels vLLM compiles on first use, with the
    per-rank shapes it calls them at (``sm=None``: Hopper assumed). Today: FP8 block-scale
    dense layers on Hopper, every M below 32 (each M may pick its own DeepGEMM kernel)."""
    engine = engine or EngineSection()
    quant = resolve_quantization(quantization, arch)
    sm_ = HOPPER if sm is None else sm
    if not (quant == "fp8" and arch.fp8_block_scaled) or not arch.hidden_size:
        return [], []
    why = _fp8_block_dense_off(arch, quant, sm_, engine)
    calls: list[JitCall] = []
    skipped: list[SkippedOp] = []
    m_values = tuple(range(1, FP8_BLOCK_M_BELOW))
    for (_, n, k), layers in _merged_linear_shapes(arch, tensor_parallel_size, FP8_BLOCK_OP).items():
        label = "+".join(layers)
        if why is None and (n % FP8_BLOCK_N_MULTIPLE or k % FP8_BLOCK_K_MULTIPLE):
            skipped.append(SkippedOp(FP8_BLOCK_OP, n, k, label,
                                     f"N must be a multiple of {FP8_BLOCK_N_MULTIPLE} and K of {FP8_BLOCK_K_MULTIPLE} "
                                     "for vLLM to choose FlashInfer/DeepGEMM; it runs CUTLASS for this layer"))
        elif why is None:
            calls.append(JitCall(FP8_BLOCK_OP, n, k, m_values, label))
        else:
            skipped.append(SkippedOp(FP8_BLOCK_OP, n, k, label, why))
    return calls, skipped


# --- the whole FlashInfer plan for one GPU -------------------------------------------------


@dataclass(frozen=True)
class FlashInferPlan:
    """What the FlashInfer phase does on this GPU: the ops it tunes and the calls whose
    kernels it compiles, with what it leaves out and why. ``key_doc`` is the part of the
    cache key it decides: exactly the work, never the reasons or the settings that led to it."""

    sm: int
    max_num_batched_tokens: int
    world: int  # ranks a tactic file must cover (tensor x data parallel)
    ops: tuple[AutoTuneOp, ...] = ()
    skipped: tuple[SkippedOp, ...] = ()
    calls: tuple[JitCall, ...] = ()
    call_skips: tuple[SkippedOp, ...] = ()

    def key_doc(self) -> dict:
        return {"sm": self.sm, "ops": [o.to_dict() for o in self.ops], "jitCalls": [c.to_dict() for c in self.calls],
                "world": self.world if self.ops else None}


def plan_flashinfer(arch: ModelArch, tensor_parallel_size: int, quantization: str, max_num_batched_tokens: int,
                    sm: int, engine: Optional[EngineSection] = None) -> FlashInferPlan:
    """``plan_ops`` and ``plan_jit_calls`` for one GPU, at the server's batch limit."""
    engine = engine or EngineSection()
    ops, skipped = plan_ops(arch, tensor_parallel_size, max_num_batched_tokens, quantization, sm, engine)
    calls, call_skips = plan_jit_calls(arch, tensor_parallel_size, quantization, sm, engine)
    return FlashInferPlan(sm, max_num_batched_tokens, tensor_parallel_size * engine.data_parallel_size, tuple(ops),
                          tuple(skipped), tuple(calls), tuple(call_skips))


def plan_for_gpu(spec: WarmerSpec, arch: ModelArch, gpu: Optional[GpuFacts],
                 facts: VllmFacts) -> Optional[FlashInferPlan]:
    """The FlashInfer work of ``spec`` on this GPU, at the server's batch limit (unset:
    this vLLM release's default for the GPU). None: FlashInfer off, or no GPU known."""
    if not spec.flashinfer.enabled or gpu is None:
        return None
    tokens = spec.flashinfer.max_num_batched_tokens or facts.default_max_num_batched_tokens(
        gpu.memory_bytes, gpu.name, gpu.sm)
    return plan_flashinfer(arch, spec.tensor_parallel_size, spec.flashinfer.quantization, tokens, gpu.sm, spec.engine)
