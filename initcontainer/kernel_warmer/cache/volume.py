"""The cache volume's layout: the one source of its sub-paths (the operator's env uses them too).

Layout (DESIGN.md):
    <root>/triton/                    TRITON_CACHE_DIR (Triton's own content-addressed cache)
    <root>/flashinfer/<env-key>/      autotune files
    <root>/flashinfer-jit/            FLASHINFER_WORKSPACE_BASE: FlashInfer's JIT builds
                                      (.cache/flashinfer/<version>/<arch>/cached_ops/<module>/)
    <root>/flashinfer-jit/deepgemm/   TRTLLM_DG_CACHE_DIR: the DeepGEMM kernels FlashInfer's
                                      FP8 block-scale GEMM compiles with nvcc (cache/<kernel>/)
    <root>/vllm/                      VLLM_CACHE_ROOT: vLLM's torch.compile (AOT) cache, its
                                      DeepGEMM JIT (deep_gemm/) and FlashInfer tuning files
    <root>/inductor/                  TORCHINDUCTOR_CACHE_DIR (vLLM sets its own on the AOT path)
    <root>/cuda/                      CUDA_CACHE_PATH: the driver's PTX JIT cache
    <root>/manifests/<key>.json       written last; what was warmed, with checksums
    <root>/.lock                      flock held while a warmer writes

Every file is written to a temp file in the same folder, fsynced and renamed into place
(``kernel_warmer.files``), so a reader (the serving process, `check`) sees the old file or
the new one, never half. Stdlib only: the operator imports it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from kernel_warmer.cache.untrusted import ensure_real_dir, real_dir
from kernel_warmer.files import TEMP_GLOB


@dataclass(frozen=True)
class CacheLayout:
    root: Path

    # Sub-paths under the root; ``sub_path`` gives them for a mount path as the operator
    # writes it into the pod's env (a plain string, not normalised).
    TRITON = "triton"
    FLASHINFER = "flashinfer"
    MANIFESTS = "manifests"
    FLASHINFER_JIT = "flashinfer-jit"
    DEEPGEMM = "flashinfer-jit/deepgemm"
    VLLM = "vllm"
    INDUCTOR = "inductor"
    CUDA = "cuda"
    # Where a serving process keeps each cache: the variable -> the sub-path. One table for
    # the operator (env on the serving and warmer containers) and the warmer's engine phase.
    FLASHINFER_DIR_ENV = "KERNEL_WARMUP_FLASHINFER_DIR"  # the serving sitecustomize's tactics folder
    SERVER_ENV = (
        ("TRITON_CACHE_DIR", TRITON),
        (FLASHINFER_DIR_ENV, FLASHINFER),
        ("FLASHINFER_WORKSPACE_BASE", FLASHINFER_JIT),
        ("TRTLLM_DG_CACHE_DIR", DEEPGEMM),
        ("VLLM_CACHE_ROOT", VLLM),
        ("TORCHINDUCTOR_CACHE_DIR", INDUCTOR),
        ("CUDA_CACHE_PATH", CUDA),
    )
    # Folders the engine phase's server writes into (what its manifest lists)
    SERVER_DIRS = (TRITON, FLASHINFER_JIT, VLLM, INDUCTOR, CUDA)

    @staticmethod
    def sub_path(mount: str, sub: str) -> str:
        return f"{mount}/{sub}"

    @classmethod
    def server_env_for(cls, mount: str) -> dict[str, str]:
        """The serving process's cache variables for a volume mounted at ``mount``."""
        return {name: cls.sub_path(mount, sub) for name, sub in cls.SERVER_ENV}

    @property
    def triton_dir(self) -> Path:
        return self.root / self.TRITON

    @property
    def flashinfer_root(self) -> Path:
        return self.root / self.FLASHINFER

    @property
    def flashinfer_jit_dir(self) -> Path:
        """FLASHINFER_WORKSPACE_BASE for the warmer and the server: what one builds, the other loads."""
        return self.root / self.FLASHINFER_JIT

    @property
    def deepgemm_dir(self) -> Path:
        """TRTLLM_DG_CACHE_DIR for the warmer and the server (FlashInfer's DeepGEMM kernels)."""
        return self.root / self.DEEPGEMM

    @property
    def manifests_dir(self) -> Path:
        return self.root / self.MANIFESTS

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def manifest_path(self, key: str) -> Path:
        return self.manifests_dir / f"{key}.json"

    def create(self) -> list[str]:
        """Make the sub-folders; a symlink or file in the place of one is replaced, never
        followed (the volume may be shared). Returns what was replaced, for the log."""
        notes = [ensure_real_dir(d) for d in (self.triton_dir, self.manifests_dir, self.flashinfer_root)]
        return [n for n in notes if n]

    def sweep_temp_files(self) -> list[Path]:
        """Remove temp files a killed writer left, and symlinks planted among the cache
        entries (call with the lock held: then no live writer of ours owns one). Only our
        own naming, only our own folders, never through a symlink."""
        removed = []
        for top in (self.triton_dir, self.flashinfer_root):
            for p in _symlinks_in(top):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
        folders = [self.manifests_dir, *sorted(p for p in self.flashinfer_root.glob("*") if real_dir(p))]
        for d in folders:
            if not real_dir(d):
                continue
            for p in d.glob(TEMP_GLOB):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
        return removed


def _symlinks_in(folder: Path) -> list[Path]:
    if not real_dir(folder):
        return []
    with contextlib.suppress(OSError), os.scandir(folder) as it:
        return [folder / e.name for e in it if e.is_symlink()]
    return []
