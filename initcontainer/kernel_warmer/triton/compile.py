"""Compile Triton variants in parallel into TRITON_CACHE_DIR.

Two modes, one cache: on GPUs, a process pool whose workers are spread over the visible
GPUs launch each variant once on tiny synthetic inputs (which also builds Triton's launcher
modules); compile-only, a process pool of CPU workers runs ``JITFunction.warmup`` under a
stub driver that reports the requested ``GPUTarget`` and needs no GPU. The kernel's
launch parameters depend on the variant alone, so both produce the same cache entry.

A worker reports "hit" when Triton found every binary it needed on disk and "compiled"
when it built one (Triton's compilation listener tells the two apart).
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from kernel_warmer.faults import fault_point
from kernel_warmer.plan.triton import TritonVariant


@dataclass
class VariantResult:
    variant: TritonVariant
    status: str  # "compiled" | "hit" | "failed"
    seconds: float
    files: list[str] = field(default_factory=list)  # Triton cache files of this variant
    error: Optional[str] = None
    device: str = ""
    # compile-only: whether Triton's launcher module was built too (a GPU launch builds it)
    launcher: Optional[str] = None
    # errno of an OSError that failed it (a full or read-only cache volume is not a kernel bug)
    os_errno: Optional[int] = None
    os_filename: Optional[str] = None

    def to_dict(self) -> dict:
        d = {"variant": self.variant.label, "status": self.status, "seconds": round(self.seconds, 3)}
        if self.launcher:
            d["launcher"] = self.launcher
        if self.error:
            d["error"] = self.error[-500:]
        return d


def parse_target(target: str) -> tuple[str, int, int]:
    """"sm_90" -> ("cuda", 90, 32): the GPUTarget compile-only reports."""
    from kernel_warmer.cache.envkey import normalize_target

    return ("cuda", int(normalize_target(target)[3:]), 32)


# --- worker side (runs in pool processes; imports torch/triton) ------------------------

_WORKER: dict = {}


def _install_stub_driver(target: tuple[str, int, int]) -> None:
    """Make Triton compile for ``target`` with no GPU: an active driver that only answers
    "which target, which device, which stream" (all a warmup asks)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime.driver import driver

    class CompileOnlyDriver(DriverBase):
        def __init__(self, tgt):
            super().__init__()
            self.target = tgt

        @classmethod
        def is_active(cls):
            return False

        def map_python_to_cpp_type(self, ty):
            raise NotImplementedError("compile-only driver cannot launch")

        def get_current_target(self):
            return self.target

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise NotImplementedError("compile-only driver cannot benchmark")

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

    driver.set_active(CompileOnlyDriver(GPUTarget(*target)))


def _listen() -> list[tuple[bool, list[str]]]:
    """Record (cache_hit, files) for every Triton compile() in this process."""
    from triton import knobs

    events: list[tuple[bool, list[str]]] = []

    def listener(*, src, metadata, metadata_group, times, cache_hit):
        events.append((bool(cache_hit), sorted(str(p) for p in metadata_group.values())))

    knobs.compilation.listener = listener
    return events


def worker_init(device_queue, target, provider_name) -> None:
    """Pool initializer: pick this worker's GPU (or install the stub driver) once."""
    from kernel_warmer.triton import providers

    _WORKER["provider"] = providers.get(provider_name)
    _WORKER["target"] = target
    if target is not None:
        # vLLM's Triton import disables Triton when no driver is active, except where
        # CUDA_VISIBLE_DEVICES is set and empty (vllm/triton_utils/importing.py)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        _install_stub_driver(target)
        _WORKER["device"] = f"compile-only:sm_{target[1]}"
    else:
        index = device_queue.get() if device_queue is not None else 0
        import torch

        torch.cuda.set_device(index)
        _WORKER["device"] = f"cuda:{index}"
    _WORKER["events"] = _listen()


def compile_variant(variant: TritonVariant) -> VariantResult:
    """Compile (or find) one variant in this worker process."""
    events = _WORKER["events"]
    events.clear()
    start = time.monotonic()
    launcher = None
    try:
        if _WORKER["target"] is not None:
            launcher = _WORKER["provider"].compile_only(variant, _WORKER["target"][1])
        else:
            import torch

            _WORKER["provider"].launch(variant, _WORKER["device"])
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - reported per variant; one bad variant must not hide the others
        os_exc = _os_error_in(exc)
        return VariantResult(variant, "failed", time.monotonic() - start, error=traceback.format_exc(limit=6),
                             device=_WORKER["device"], os_errno=os_exc.errno if os_exc else None,
                             os_filename=str(os_exc.filename) if os_exc and os_exc.filename else None)
    fault_point("worker-compiled")
    files = sorted({f for _, fs in events for f in fs})
    status = "compiled" if any(not hit for hit, _ in events) else "hit"
    return VariantResult(variant, status, time.monotonic() - start, files=files, device=_WORKER["device"],
                         launcher=launcher if isinstance(launcher, str) else None)


def _os_error_in(exc: BaseException) -> Optional[OSError]:
    """The OSError behind ``exc`` (itself, or along its cause/context chain)."""
    seen = 0
    cur: Optional[BaseException] = exc
    while cur is not None and seen < 8:
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return None


# --- parent side ---------------------------------------------------------------------


def visible_gpu_count() -> int:
    """GPUs this process may use, without initialising CUDA in the parent."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([p for p in visible.split(",") if p.strip() and p.strip() != "-1"])
    try:
        return len(list(Path("/proc/driver/nvidia/gpus").iterdir()))
    except OSError:
        pass
    import torch

    return torch.cuda.device_count()


def pick_workers(n_variants: int, requested: int, gpus: int, compile_only: bool) -> int:
    if n_variants == 0:
        return 0
    if requested > 0:
        return min(requested, n_variants)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # Compiling is CPU work; on GPUs each worker also holds a CUDA context, so cap per GPU.
    cap = cpus if compile_only else min(cpus, max(1, gpus) * 8)
    return max(1, min(n_variants, cap))


def compile_variants(
    variants: list[TritonVariant],
    triton_dir: Path,
    provider: str,
    target: Optional[str] = None,
    workers: int = 0,
    log: Callable[[str], None] = lambda _m: None,
    sequential: bool = False,
) -> list[VariantResult]:
    """Compile every variant into ``triton_dir``.

    ``target`` ("sm_90"): compile-only, no GPU. ``sequential``: one process, one variant
    after another (the seed warmup's loop; kept for the benchmark's comparison).
    """
    if not variants:
        return []
    os.environ["TRITON_CACHE_DIR"] = str(triton_dir)  # inherited by the spawned workers
    tgt = parse_target(target) if target else None
    gpus = 0 if tgt else visible_gpu_count()
    if tgt is None and gpus == 0:
        raise RuntimeError("no GPU visible: run on the GPU node, or compile without one with "
                           "--compile-only --target sm_90 (the GPU's arch)")
    if sequential:
        worker_init(None, tgt, provider)
        results = []
        for v in variants:
            results.append(r := compile_variant(v))
            log(f"triton {r.status:8s} {r.seconds:6.2f}s {v.label}")
        return results
    n = pick_workers(len(variants), workers, gpus, tgt is not None)
    ctx = multiprocessing.get_context("spawn")  # CUDA does not survive fork
    queue = None
    if tgt is None:
        queue = ctx.Queue()
        for i in range(n):
            queue.put(i % gpus)
    log(f"triton: {len(variants)} variant(s) on {n} worker(s)"
        + (f" for {target} (compile-only)" if tgt else f" over {gpus} GPU(s)"))
    results: list[VariantResult] = []
    try:
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=worker_init,
                                 initargs=(queue, tgt, provider)) as pool:
            for r in pool.map(compile_variant, variants):
                results.append(r)
                log(f"triton {r.status:8s} {r.seconds:6.2f}s [{r.device}] {r.variant.label}")
    except BrokenProcessPool:
        raise RuntimeError(f"a Triton compile worker died (killed by a signal, often the out-of-memory killer) "
                           f"after {len(results)} of {len(variants)} variant(s); raise the warmer's memory limit "
                           f"or lower spec.triton.workers") from None
    return results
