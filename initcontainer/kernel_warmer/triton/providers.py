"""Who supplies the prefill-attention kernel that gets compiled.

``vllm``: vLLM's own ``context_attention_fwd``, launched exactly as the planned call site
launches it (``TritonVariant.call_kwargs``), so the cache entries are the ones the server
looks up. ``builtin``: this project's causal self-test kernel (no server calls it; kept to
check a GPU and Triton install without vLLM). ``auto``: vllm when it is importable; else
the Triton phase has nothing of vLLM's to warm and says so.

Compile-only (no GPU) runs vLLM's own launcher, not a copy of it: the kernel object is
swapped for one whose ``[grid](...)`` launch is Triton's ``run(..., warmup=True)``, the
tensors carry only dtype, shape and strides, and the module's ``current_platform`` answers
for the target capability (the launcher's block size depends on it).

Import-light: torch, triton and vllm are imported inside the methods that launch or compile.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from kernel_warmer.plan.triton import NO_WINDOW, TritonVariant
from kernel_warmer.spec import Provider

PROVIDERS = typing.get_args(Provider)
# Where vLLM keeps the packed prefill kernel, newest first.
VLLM_MODULES = (
    "vllm.v1.attention.ops.triton_prefill_attention",
    "vllm.attention.ops.triton_prefill_attention",
)
# Synthetic batch: two ragged sequences, enough to take every code path once.
SYNTHETIC_LENGTHS = (5, 3)


class ProviderError(RuntimeError):
    pass


def vllm_importable() -> bool:
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def resolve(name: str) -> Optional[str]:
    """"auto" -> "vllm" when importable, else None (nothing of vLLM's to warm here)."""
    if name not in PROVIDERS:
        raise ProviderError(f"triton.provider: must be one of {', '.join(PROVIDERS)}, got {name!r}")
    if name == "auto":
        return "vllm" if vllm_importable() else None
    if name == "vllm" and not vllm_importable():
        raise ProviderError("triton.provider: 'vllm' is not importable here; run the warmer in the serving image")
    return name


def kernel_fingerprint(name: str) -> str:
    """What of the kernel's source the cache key must follow."""
    if name == "builtin":
        src = Path(__file__).parent / "kernels" / "prefill_attention.py"
        return "builtin:" + hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    for path in _vllm_kernel_files():
        return "vllm:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return "vllm:unknown"


def kernel_sha256() -> Optional[str]:
    """sha256 of vLLM's installed prefill-kernel file (None: no vLLM here)."""
    for path in _vllm_kernel_files():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return None


def _vllm_kernel_files() -> list[Path]:
    """vLLM's kernel source files, found without importing vLLM (``check`` stays light)."""
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return []
    roots = list(spec.submodule_search_locations or []) if spec else []
    rel = [m.split(".", 1)[1].replace(".", "/") + ".py" for m in VLLM_MODULES]
    return [Path(r) / p for r in roots for p in rel if (Path(r) / p).is_file()]


@dataclass(frozen=True)
class ShapeOnlyTensor:
    """Stands in for a contiguous tensor where only dtype, shape and strides matter
    (compile-only): Triton reads ``dtype`` and ``data_ptr()`` (0: 16-byte aligned)."""

    dtype: Any
    shape: tuple[int, ...]

    def data_ptr(self) -> int:
        return 0

    def element_size(self) -> int:  # vLLM 0.34's launcher sizes its tile with it
        return int(self.dtype.itemsize)

    def stride(self, dim: Optional[int] = None):
        strides = [1]
        for n in reversed(self.shape[1:]):
            strides.insert(0, strides[0] * n)
        return tuple(strides) if dim is None else strides[dim]


def _torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def synthetic_inputs(v: TritonVariant, device: str):
    """Tiny packed q/k/v/o with the variant's real head counts (so strides, which Triton
    specializes on, match the server's)."""
    import torch

    dt = _torch_dtype(v.dtype)
    total = sum(SYNTHETIC_LENGTHS)
    q = torch.randn(total, v.num_heads, v.head_size, device=device).to(dt)
    k = torch.randn(total, v.num_kv_heads, v.head_size, device=device).to(dt)
    val = torch.randn(total, v.num_kv_heads, v.head_size, device=device).to(dt)
    o = torch.empty_like(q)
    b_start = torch.tensor([0, SYNTHETIC_LENGTHS[0]], dtype=torch.int32, device=device)
    b_len = torch.tensor(SYNTHETIC_LENGTHS, dtype=torch.int32, device=device)
    return q, k, val, o, b_start, b_len


def shape_only_inputs(v: TritonVariant):
    import torch

    dt = _torch_dtype(v.dtype)
    total = sum(SYNTHETIC_LENGTHS)
    q = ShapeOnlyTensor(dt, (total, v.num_heads, v.head_size))
    kv = ShapeOnlyTensor(dt, (total, v.num_kv_heads, v.head_size))
    idx = ShapeOnlyTensor(torch.int32, (len(SYNTHETIC_LENGTHS),))
    return q, kv, kv, ShapeOnlyTensor(dt, q.shape), idx, idx


class BuiltinProvider:
    name = "builtin"

    def _check(self, v: TritonVariant) -> None:
        if not v.is_causal:
            raise ProviderError(f"the builtin kernel is causal only; {v.site} is not (use the vllm provider)")

    def launch(self, v: TritonVariant, device: str) -> None:
        from kernel_warmer.triton.kernels.prefill_attention import prefill_attention

        self._check(v)
        q, k, val, o, b_start, b_len = synthetic_inputs(v, device)
        prefill_attention(q, k, val, o, b_start, b_len, max(SYNTHETIC_LENGTHS), scale=v.scale,
                          softcap=v.softcap, sliding_window=v.sliding_window or NO_WINDOW)

    def compile_only(self, v: TritonVariant, capability: int) -> Any:
        """JITFunction.warmup with shape-only tensors; the active driver decides the target."""
        from kernel_warmer.triton.kernels.prefill_attention import (
            _prefill_attention_kernel,
            kernel_args,
        )

        self._check(v)
        q, k, val, o, idx, _ = shape_only_inputs(v)
        args, kwargs = kernel_args(q, k, val, o, idx, idx, v.scale, v.softcap, v.sliding_window or NO_WINDOW)
        return _prefill_attention_kernel.warmup(*args, grid=(1,), **kwargs)


def _vllm_module():
    errors = []
    for name in VLLM_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if hasattr(mod, "context_attention_fwd"):
            return mod
        errors.append(f"{name}: no context_attention_fwd")
    raise ProviderError("vllm provider: no context_attention_fwd found (" + "; ".join(errors) + ")")


# cudaDevAttrMaxSharedMemoryPerBlockOptin by compute capability (CUDA C++ Programming Guide,
# "Technical Specifications per Compute Capability"), what vLLM 0.34's launcher sizes its
# tile from (``_fit_block_to_shared_memory``); tests/gpu checks the value of the GPU it runs on.
SHARED_MEMORY_OPTIN = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 101: 232448,
                       103: 232448, 110: 232448, 120: 101376, 121: 101376}


def shared_memory_bytes(capability: int) -> int:
    """The target's opt-in shared memory per block (the nearest lower known arch for others)."""
    known = [c for c in SHARED_MEMORY_OPTIN if c <= capability]
    if not known:
        raise ProviderError(f"compile-only: no shared-memory size known for SM{capability}")
    return SHARED_MEMORY_OPTIN[max(known)]


class TargetPlatform:
    """vLLM's ``current_platform`` as the launcher asks it, answering for a target GPU:
    CUDA, and no other platform (``is_rocm``, ``is_xpu`` (0.34), ``is_cpu``, ...)."""

    def __init__(self, capability: int) -> None:
        self.capability = capability

    def is_cuda(self) -> bool:
        return True

    def is_cuda_alike(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("is_"):  # every other platform predicate vLLM asks: not this one
            return lambda *args, **kwargs: False
        raise AttributeError(f"compile-only platform: vLLM's launcher asked {name!r}, which it does not answer")

    def get_device_capability(self, device_id: int = 0) -> int:
        return self.capability

    def has_device_capability(self, capability: Any, device_id: int = 0) -> bool:
        if isinstance(capability, tuple):
            capability = capability[0] * 10 + capability[1]
        return self.capability >= int(capability)


class _WarmupKernel:
    """``kernel[grid](...)`` that compiles (Triton's warmup launch) and records the result."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.compiled: list[Any] = []

    def __getitem__(self, grid: Any) -> Callable:
        def launch(*args: Any, **kwargs: Any) -> Any:
            compiled = self.kernel.run(*args, grid=grid, warmup=True, **kwargs)
            self.compiled.append(compiled)
            return compiled
        return launch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kernel, name)


# What vLLM's launcher module asks the GPU, and the compile-only answer for the target:
# the platform (every release) and the shared memory per block (0.34's tile fitting).
_ANSWERS: dict[str, Callable[[int], Any]] = {
    "current_platform": TargetPlatform,
    "get_max_shared_memory_bytes": lambda cap: (lambda *args, **kwargs: shared_memory_bytes(cap)),
}


@contextlib.contextmanager
def warmup_only(module: Any, capability: int) -> Iterator[_WarmupKernel]:
    """Within: every launch of ``module._fwd_kernel`` compiles only, for ``capability``, and
    every GPU question the launcher asks (``_ANSWERS``, where the module has it) is answered
    for the target."""
    kernel = module._fwd_kernel
    saved = {name: getattr(module, name) for name in _ANSWERS if hasattr(module, name)}
    proxy = _WarmupKernel(kernel)
    module._fwd_kernel = proxy
    for name in saved:
        setattr(module, name, _ANSWERS[name](capability))
    _clear_caches(module)
    try:
        yield proxy
    finally:
        module._fwd_kernel = kernel
        for name, value in saved.items():
            setattr(module, name, value)
        _clear_caches(module)


def _clear_caches(module: Any) -> None:
    """vLLM 0.34 caches its tile fitting (functools.cache): an answer for the target must
    not outlive the warmup, nor a GPU's answer leak into it."""
    fit = getattr(module, "_fit_block_to_shared_memory", None)
    if hasattr(fit, "cache_clear"):
        fit.cache_clear()


def build_launcher(compiled: Any) -> str:
    """Build Triton's per-signature launcher module into the cache (a GPU process would
    on its first launch). Needs libcuda on the machine; says why not where it is missing."""
    try:
        from triton.backends.nvidia.driver import CudaLauncher

        CudaLauncher(compiled.src, compiled.metadata)
        return "built"
    except Exception as exc:  # noqa: BLE001 - best effort: the GPU process builds it otherwise
        return f"not built ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"


class VllmProvider:
    name = "vllm"

    def _call(self, fn: Callable, v: TritonVariant, tensors: tuple, sinks: Any) -> None:
        kwargs = v.call_kwargs()
        if "sinks" in kwargs:
            kwargs["sinks"] = sinks if kwargs["sinks"] else None
        q, k, val, o, b_start, b_len = tensors
        fn(q, k, val, o, b_start, b_len, max(SYNTHETIC_LENGTHS), **accepted_kwargs(fn, kwargs))

    def launch(self, v: TritonVariant, device: str) -> None:
        import torch

        fn = _vllm_module().context_attention_fwd
        sinks = torch.zeros(v.num_heads, dtype=torch.float32, device=device) if v.sinks else None
        self._call(fn, v, synthetic_inputs(v, device), sinks)

    def compile_only(self, v: TritonVariant, capability: int) -> str:
        """vLLM's launcher under a warmup-only launch; returns what became of the launcher module."""
        import torch

        module = _vllm_module()
        sinks = ShapeOnlyTensor(torch.float32, (v.num_heads,)) if v.sinks else None
        with warmup_only(module, capability) as kernel:
            self._call(module.context_attention_fwd, v, shape_only_inputs(v), sinks)
        if not kernel.compiled:
            raise ProviderError("vllm provider: context_attention_fwd launched no kernel")
        return build_launcher(kernel.compiled[-1])


def accepted_kwargs(fn: Callable, wanted: dict[str, Any]) -> dict[str, Any]:
    """Only the keyword arguments ``fn``'s signature accepts (vLLM's changes across releases)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(wanted)
    return {k: val for k, val in wanted.items() if k in params}


def get(name: str):
    return {"builtin": BuiltinProvider, "vllm": VllmProvider}[name]()
