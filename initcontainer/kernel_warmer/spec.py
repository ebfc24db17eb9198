"""The contract between the operator and the warmer.

The operator renders a KernelWarmup's spec into a ``WarmerSpec`` and hands it to the init
container as JSON (env ``KERNEL_WARMER_SPEC``); the warmer parses it back here. The warmer
owns this model because it consumes it, and it is stdlib-only so the package can be copied
into any serving image. Parsing errors name the offending field by its dotted path.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from kernel_warmer import engine as vllm_facts
from kernel_warmer import heads
from kernel_warmer.errors import FieldError

SPEC_ENV = "KERNEL_WARMER_SPEC"

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
Quantization = Literal["auto", "none", "fp8", "nvfp4"]
# FlashInfer tuning: every rank tunes a share and rank 0 merges (sharded), or rank 0 tunes all
Tuning = Literal["sharded", "rank0"]
FailurePolicy = Literal["Ignore", "Fail"]
Provider = Literal["auto", "builtin", "vllm"]
# vLLM's own spellings (kernel_warmer/engine.py holds the lists, read from vLLM's source).
AttentionBackend = Literal[vllm_facts.ATTENTION_BACKENDS]
KvCacheDtype = Literal[vllm_facts.KV_CACHE_DTYPES]
MoeBackend = Literal[vllm_facts.MOE_BACKENDS]
LinearBackend = Literal[vllm_facts.LINEAR_BACKENDS]
Runner = Literal[vllm_facts.RUNNERS]
MmEncoderTpMode = Literal["weights", "data"]
# The engine phase (kernel_warmer/server/): the serving image's own vLLM with dummy weights
EngineWarmup = Literal["auto", "always", "never"]


class SpecError(FieldError):
    """A spec field is missing or wrong; ``field`` is its dotted path."""


# Where the cache volume is mounted unless the KernelWarmup says (spec.cache.mountPath).
DEFAULT_CACHE_DIR = "/kernel-warmup-cache"
# Bounds on a model's shapes (a config.json's or explicit layers'): well above any released
# model, low enough that a hostile value cannot make a plan of millions of variants.
MAX_HEADS = 1 << 16
MAX_HEAD_SIZE = 1 << 13
MAX_LAYERS = 1 << 16


@dataclass(frozen=True)
class LayerSpec:
    """One attention layer given explicitly instead of through a config.json."""

    num_heads: int
    num_kv_heads: int
    head_size: int
    count: int = 1
    # Sliding window in tokens (None: full attention).
    sliding_window: Optional[int] = None
    softcap: float = 0.0
    scale: Optional[float] = None
    # Features the NVFP4 pure-prefill path does not take: such layers are skipped.
    sinks: bool = False
    alibi: bool = False
    kv_sharing: bool = False
    chunked_lookback: bool = False


@dataclass(frozen=True)
class ModelSource:
    """Where the model's shapes come from: a config.json path, or explicit layers."""

    config_path: Optional[str] = None
    layers: Optional[list[LayerSpec]] = None
    # Linear-layer shapes for FlashInfer when only explicit layers are given.
    hidden_size: Optional[int] = None
    intermediate_size: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.config_path is None) == (self.layers is None):
            raise SpecError("configPath", "set exactly one of configPath or layers")
        total = 0
        for i, layer in enumerate(self.layers or []):
            where = f"layers[{i}]"
            for name, value, limit in (("numHeads", layer.num_heads, MAX_HEADS),
                                       ("numKvHeads", layer.num_kv_heads, MAX_HEADS),
                                       ("headSize", layer.head_size, MAX_HEAD_SIZE), ("count", layer.count, MAX_LAYERS)):
                if value < 1:
                    raise SpecError(f"{where}.{name}", f"must be >= 1, got {value}")
                if value > limit:
                    raise SpecError(f"{where}.{name}", f"{value} is implausibly large (limit {limit})")
            total += layer.count
            if total > MAX_LAYERS:
                raise SpecError(f"{where}.count", f"the layers add up to more than {MAX_LAYERS}")


@dataclass(frozen=True)
class TritonSection:
    enabled: bool = True
    provider: Provider = "auto"
    # Compile for this arch without a GPU ("sm_90"); None compiles on the pod's GPUs.
    compile_only_target: Optional[str] = None
    # Parallel workers; 0 picks from visible GPUs and CPU cores.
    workers: int = 0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise SpecError("workers", "must be >= 0 (0 picks from the visible GPUs and CPU cores)")


@dataclass(frozen=True)
class FlashInferSection:
    enabled: bool = True
    quantization: Quantization = "auto"
    # None: vLLM's default for the GPU (engine.default_max_num_batched_tokens)
    max_num_batched_tokens: Optional[int] = None
    # sharded: every rank tunes a share, rank 0 merges and broadcasts one file; rank0: rank 0
    # tunes everything. Ranks on different GPU models fall back to rank0 (with a warning).
    tuning: Tuning = "sharded"

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise SpecError("maxNumBatchedTokens", "must be >= 1")


@dataclass(frozen=True)
class EngineSection:
    """The serving engine's settings that decide which kernels run. The operator reads
    them from the serving container's ``vllm serve`` command (kernel_warmer/engine.py maps
    each flag to one of these fields); unset means vLLM's default."""

    attention_backend: Optional[AttentionBackend] = None
    mm_encoder_attn_backend: Optional[AttentionBackend] = None
    mm_encoder_tp_mode: MmEncoderTpMode = "weights"
    kv_cache_dtype: KvCacheDtype = "auto"
    quantization: Optional[str] = None
    linear_backend: LinearBackend = "auto"
    moe_backend: MoeBackend = "auto"
    enable_expert_parallel: bool = False
    flashinfer_autotune: bool = True
    runner: Runner = "auto"
    # --hf-overrides '{"is_causal": false}': text layers run bidirectionally
    bidirectional: bool = False
    data_parallel_size: int = 1
    # env VLLM_USE_DEEP_GEMM and VLLM_BLOCKSCALE_FP8_GEMM_FLASHINFER (both on by default)
    deep_gemm: bool = True
    flashinfer_blockscale_fp8_gemm: bool = True

    def __post_init__(self) -> None:
        if self.data_parallel_size < 1:
            raise SpecError("dataParallelSize", "must be >= 1")


@dataclass(frozen=True)
class ServerSection:
    """The serving container's own start, for the engine phase: its command and args as
    the Pod has them (``command`` empty: the image's ENTRYPOINT, ``vllm serve`` in
    vllm/vllm-openai) and the PYTHONPATH the serving container gets. ``warmup``: auto runs
    the phase where vLLM is importable and the Pod has GPUs; always fails where it cannot."""

    warmup: EngineWarmup = "auto"
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    pythonpath: Optional[str] = None


@dataclass(frozen=True)
class DistributedSection:
    """Cross-pod worlds; unset fields are read from the pod's environment."""

    world_size: Optional[int] = None
    rank: Optional[int] = None
    master_addr: Optional[str] = None
    master_port: int = 29551
    timeout_seconds: int = 300


@dataclass(frozen=True)
class WarmerSpec:
    model: ModelSource
    cache_dir: str = DEFAULT_CACHE_DIR
    tensor_parallel_size: int = 1
    dtype: Dtype = "auto"
    triton: TritonSection = field(default_factory=TritonSection)
    flashinfer: FlashInferSection = field(default_factory=FlashInferSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    engine: EngineSection = field(default_factory=EngineSection)
    server: ServerSection = field(default_factory=ServerSection)
    failure_policy: FailurePolicy = "Fail"
    timeout_seconds: int = 1800

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise SpecError("tensorParallelSize", "must be >= 1")
        split = heads.SplitFields("tensorParallelSize", "tensorParallelSize", SpecError)
        for layer in self.model.layers or []:  # a config.json's heads are checked where it is read
            heads.per_rank_heads(layer.num_heads, layer.num_kv_heads, self.tensor_parallel_size, split)
        if self.timeout_seconds < 1:
            raise SpecError("timeoutSeconds", "must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return _dump(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> "WarmerSpec":
        return _load(cls, data, "")

    @classmethod
    def from_json(cls, text: str) -> "WarmerSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError("<spec>", f"not valid JSON: {exc}") from None
        except RecursionError:  # hostile nesting: an error naming the input, not a crash
            raise SpecError("<spec>", "nests too deeply to be a warmer spec") from None
        return cls.from_dict(data)


# --- camelCase (the CR's and the wire's spelling) <-> snake_case (Python's) -----------


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _dump(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is not None:
                out[camel(f.name)] = _dump(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [_dump(v) for v in obj]
    return obj


def _load(tp: Any, data: Any, path: str) -> Any:
    where = path or "<spec>"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return _load(args[0], data, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if data not in allowed:
            raise SpecError(where, f"must be one of {', '.join(map(str, allowed))}, got {data!r}")
        return data
    if origin is list:
        if not isinstance(data, list):
            raise SpecError(where, f"must be a list, got {type(data).__name__}")
        (item,) = typing.get_args(tp)
        return [_load(item, v, f"{path}[{i}]") for i, v in enumerate(data)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise SpecError(where, f"must be an object, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        known = {camel(f.name): f for f in dataclasses.fields(tp)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(where, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kwargs = {}
        for key, f in known.items():
            sub = f"{path}.{key}" if path else key
            if key in data:
                kwargs[f.name] = _load(hints[f.name], data[key], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(sub, "is required")
        try:
            return tp(**kwargs)
        except SpecError as exc:  # raised by __post_init__ with a field relative to tp
            if not path:
                raise
            raise SpecError(f"{path}.{exc.field}", exc.message) from None
    if tp is bool:
        if not isinstance(data, bool):
            raise SpecError(where, f"must be true or false, got {data!r}")
        return data
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise SpecError(where, f"must be an integer, got {data!r}")
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise SpecError(where, f"must be a number, got {data!r}")
        return float(data)
    if tp is str:
        if not isinstance(data, str):
            raise SpecError(where, f"must be a string, got {data!r}")
        return data
    raise TypeError(f"unsupported type {tp!r} at {where}")  # a bug in this module, not input
