"""Who supplies the prefill-attention kernel that gets compiled.

``builtin``: this project's kernel (kernels/prefill_attention.py). ``vllm``: vLLM's own
``context_attention_fwd``, so the cache entries are exactly the ones the server will look
up. ``auto``: vllm when it is importable, else builtin. Import-light: torch, triton and
vllm are imported inside the methods that launch or compile.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from kernel_warmer.plan.triton import TritonVariant

PROVIDERS = ("auto", "builtin", "vllm")
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


def resolve(name: str, compile_only: bool = False) -> str:
    """"auto" -> "vllm" when importable, else "builtin"; errors name the setting and the fix."""
    if name not in PROVIDERS:
        raise ProviderError(f"triton.provider: must be one of {', '.join(PROVIDERS)}, got {name!r}")
    if name == "auto":
        name = "vllm" if vllm_importable() else "builtin"
    if name == "vllm" and not vllm_importable():
        raise ProviderError("triton.provider: 'vllm' is not importable here; use 'builtin' or run in the vLLM image")
    if name == "vllm" and compile_only:
        raise ProviderError("compile-only needs triton.provider 'builtin': vLLM's launcher picks its block sizes "
                            "from the live GPU; run the warmer on the GPU (without --target) for the vllm provider")
    return name


def kernel_fingerprint(name: str) -> str:
    """What of the kernel's source the cache key must follow (vLLM's version is in the env key)."""
    if name == "builtin":
        src = Path(__file__).parent / "kernels" / "prefill_attention.py"
        return "builtin:" + hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    return name


@dataclass(frozen=True)
class ShapeOnlyTensor:
    """Stands in for a contiguous tensor where only dtype, shape and strides matter
    (compile-only): Triton reads ``dtype`` and ``data_ptr()`` (0: 16-byte aligned)."""

    dtype: Any
    shape: tuple[int, ...]

    def data_ptr(self) -> int:
        return 0

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
    starts = [0, SYNTHETIC_LENGTHS[0]]
    b_start = torch.tensor(starts, dtype=torch.int32, device=device)
    b_len = torch.tensor(SYNTHETIC_LENGTHS, dtype=torch.int32, device=device)
    return q, k, val, o, b_start, b_len


class BuiltinProvider:
    name = "builtin"

    def launch(self, v: TritonVariant, device: str) -> None:
        from kernel_warmer.triton.kernels.prefill_attention import prefill_attention

        q, k, val, o, b_start, b_len = synthetic_inputs(v, device)
        prefill_attention(q, k, val, o, b_start, b_len, max(SYNTHETIC_LENGTHS), scale=v.scale,
                          softcap=v.softcap, sliding_window=v.sliding_window)

    def compile_only(self, v: TritonVariant) -> Any:
        """JITFunction.warmup with shape-only tensors; the active driver decides the target."""
        from kernel_warmer.triton.kernels.prefill_attention import (
            _prefill_attention_kernel,
            kernel_args,
        )

        dt = _torch_dtype(v.dtype)
        total = sum(SYNTHETIC_LENGTHS)
        q = ShapeOnlyTensor(dt, (total, v.num_heads, v.head_size))
        kv = ShapeOnlyTensor(dt, (total, v.num_kv_heads, v.head_size))
        o = ShapeOnlyTensor(dt, (total, v.num_heads, v.head_size))
        import torch

        idx = ShapeOnlyTensor(torch.int32, (len(SYNTHETIC_LENGTHS),))
        args, kwargs = kernel_args(q, kv, kv, o, idx, idx, v.scale, v.softcap, v.sliding_window)
        return _prefill_attention_kernel.warmup(*args, grid=(1,), **kwargs)


class VllmProvider:
    name = "vllm"

    def _fn(self) -> Callable:
        errors = []
        for mod in VLLM_MODULES:
            try:
                return importlib.import_module(mod).context_attention_fwd
            except (ImportError, AttributeError) as exc:
                errors.append(f"{mod}: {exc}")
        raise ProviderError("vllm provider: no context_attention_fwd found (" + "; ".join(errors) + ")")

    def launch(self, v: TritonVariant, device: str) -> None:
        fn = self._fn()
        q, k, val, o, b_start, b_len = synthetic_inputs(v, device)
        wanted = {
            "is_causal": True,
            "softmax_scale": v.scale,
            "sliding_window_q": v.sliding_window[0] if v.sliding_window[0] >= 0 else None,
            "sliding_window_k": v.sliding_window[1] if v.sliding_window[1] >= 0 else None,
            "softcap": v.softcap,
            "logit_cap": v.softcap,
        }
        fn(q, k, val, o, b_start, b_len, max(SYNTHETIC_LENGTHS), **accepted_kwargs(fn, wanted))

    def compile_only(self, v: TritonVariant) -> Any:
        raise ProviderError("the vllm provider cannot compile without a GPU; see providers.resolve")


def accepted_kwargs(fn: Callable, wanted: dict[str, Any]) -> dict[str, Any]:
    """Only the keyword arguments ``fn``'s signature accepts (vLLM's changes across releases)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(wanted)
    return {k: val for k, val in wanted.items() if k in params}


def get(name: str):
    return {"builtin": BuiltinProvider, "vllm": VllmProvider}[name]()
