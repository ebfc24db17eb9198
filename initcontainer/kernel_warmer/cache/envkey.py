"""The environment half of the cache key, computed without importing torch or triton.

Triton's own cache key covers its build (libtriton.so and its sources), so a cache warmed
by another Triton install is cold even at the same version. This key mirrors that cheaply:
package versions from metadata, the size and mtime of libtriton.so, the Python version,
the GPU model (from the NVIDIA driver's /proc files) or the compile-only target, and the
TRITON_*/LLVM_* environment that Triton folds into its own key.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

PACKAGES = ("triton", "torch", "vllm", "flashinfer-python")
# Env vars that do not change what Triton compiles (paths and logging).
_ENV_IGNORED = {"TRITON_CACHE_DIR", "TRITON_HOME", "TRITON_DUMP_DIR", "TRITON_OVERRIDE_DIR",
                "TRITON_PRINT_AUTOTUNING", "TRITON_INTERPRET"}
PROC_GPUS = Path("/proc/driver/nvidia/gpus")


@dataclass(frozen=True)
class EnvKey:
    python: str
    machine: str
    packages: dict[str, Optional[str]]
    libtriton: Optional[str]  # "size:mtime_ns" of triton/_C/libtriton.so
    target: str  # "sm_90" (compile-only) or "gpu:<model names>"
    env: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def package_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def libtriton_stamp() -> Optional[str]:
    """Size and mtime of the installed libtriton.so, found without importing triton."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        lib = Path(base) / "_C" / "libtriton.so"
        try:
            st = lib.stat()
        except OSError:
            continue
        return f"{st.st_size}:{st.st_mtime_ns}"
    return None


def gpu_models(proc_dir: Path = PROC_GPUS) -> list[str]:
    """Distinct GPU model names from the NVIDIA driver (what `nvidia-smi -L` shows)."""
    names = []
    try:
        entries = sorted(proc_dir.iterdir())
    except OSError:
        return []
    for d in entries:
        try:
            for line in (d / "information").read_text().splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
        except OSError:
            continue
    return sorted(set(names))  # a pod sees only its own GPUs in /proc


def triton_env() -> dict[str, str]:
    return {k: v for k, v in sorted(os.environ.items())
            if (k.startswith("TRITON_") or k.startswith("LLVM_")) and k not in _ENV_IGNORED}


def compute_env_key(target: Optional[str] = None) -> EnvKey:
    """``target`` ("sm_90"): compile-only for that arch; None: the GPUs this pod sees."""
    if target:
        where = normalize_target(target)
    else:
        models = gpu_models()
        where = "gpu:" + (",".join(models) if models else "unknown")
    return EnvKey(
        python=".".join(map(str, sys.version_info[:3])) + f"-{sys.implementation.name}",
        machine=platform.machine(),
        packages={p: package_version(p) for p in PACKAGES},
        libtriton=libtriton_stamp(),
        target=where,
        env=triton_env(),
    )


def normalize_target(target: str) -> str:
    """"sm_90", "sm90", "90", "sm_90a" -> "sm_90"; anything else is a clear error."""
    t = target.strip().lower().removeprefix("sm").lstrip("_").removesuffix("a")
    if not t.isdigit() or not 30 <= int(t) <= 200:
        raise ValueError(f"--target: expected an NVIDIA arch like sm_90 or sm_100, got {target!r}")
    return f"sm_{int(t)}"
