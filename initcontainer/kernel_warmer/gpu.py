"""The pod's GPU as the plan needs it (model, SM, memory), read without torch.

``check`` must stay light (no torch, no CUDA context), yet the FlashInfer plan depends on
the GPU: which ops vLLM calls (the SM) and vLLM's default ``--max-num-batched-tokens``
(the memory). NVML answers both in milliseconds through ``libnvidia-ml.so.1``, which the
NVIDIA container runtime mounts into every GPU container (``nvidia-smi`` needs it). Where
it cannot be loaded the answer is None and the cache key falls back to the raw inputs of
the FlashInfer plan (conservative: a change of any of them reads cold).

Stdlib only (ctypes). NVML lists the GPUs the container was given, in PCI order; a pod's
GPUs are one model, and the plan is made for the first (as the warmer's workers are).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Callable, Optional

NVML_LIBRARIES = ("libnvidia-ml.so.1", "libnvidia-ml.so")


@dataclass(frozen=True)
class GpuFacts:
    name: str
    sm: int  # compute capability as major * 10 + minor
    memory_bytes: int
    count: int

    def to_dict(self) -> dict:
        return {"name": self.name, "sm": self.sm, "memoryBytes": self.memory_bytes, "count": self.count}


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _load(names=NVML_LIBRARIES) -> Optional[ctypes.CDLL]:
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def probe(loader: Callable[[], Optional[ctypes.CDLL]] = _load) -> Optional[GpuFacts]:
    """The first GPU's facts from NVML, or None (no driver library, no GPU, an NVML error)."""
    lib = loader()
    if lib is None:
        return None
    try:
        if lib.nvmlInit_v2() != 0:
            return None
    except (AttributeError, OSError):
        return None
    try:
        return _first_gpu(lib)
    except (AttributeError, OSError, ValueError):
        return None
    finally:
        try:
            lib.nvmlShutdown()
        except (AttributeError, OSError):
            pass


def _first_gpu(lib: ctypes.CDLL) -> Optional[GpuFacts]:
    count = ctypes.c_uint(0)
    if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0 or count.value == 0:
        return None
    handle = ctypes.c_void_p()
    if lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) != 0:
        return None
    name = ctypes.create_string_buffer(96)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    memory = _Memory()
    if (lib.nvmlDeviceGetName(handle, name, ctypes.c_uint(96)) != 0
            or lib.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor)) != 0
            or lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0):
        return None
    return GpuFacts(name.value.decode(errors="replace"), major.value * 10 + minor.value, int(memory.total),
                    int(count.value))


def memory_used(loader: Callable[[], Optional[ctypes.CDLL]] = _load) -> Optional[list[int]]:
    """Bytes in use on each GPU of the container (None where NVML cannot be read): the
    engine phase checks its server's memory is free before the real server starts."""
    lib = loader()
    if lib is None:
        return None
    try:
        if lib.nvmlInit_v2() != 0:
            return None
    except (AttributeError, OSError):
        return None
    try:
        count = ctypes.c_uint(0)
        if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return None
        used = []
        for i in range(count.value):
            handle, memory = ctypes.c_void_p(), _Memory()
            if (lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) != 0
                    or lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0):
                return None
            used.append(int(memory.used))
        return used
    except (AttributeError, OSError):
        return None
    finally:
        try:
            lib.nvmlShutdown()
        except (AttributeError, OSError):
            pass
