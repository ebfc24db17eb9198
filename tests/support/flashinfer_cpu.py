"""A real FlashInfer release, importable on a CPU, for tests of its autotuner's file keys.

Nothing of FlashInfer's is committed: ``ensure(version)`` downloads the release's wheel and
the few pure or small packages its ``import flashinfer`` needs on a machine without CUDA
(``pip download --no-deps`` from PyPI, cached under ``$KERNEL_WARMUP_CACHE/flashinfer-cpu``)
and installs them into one folder for PYTHONPATH. Each release is paired with the
apache-tvm-ffi that its serving stack pins (vLLM 0.33 pins 0.1.11 with FlashInfer
0.7.2.post1; the GPU figures up to 2026-11-27 used 0.1.15.post2 with 0.6.18).

    python tests/support/flashinfer_cpu.py 0.7.2.post1     # prints the folder
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

TVM_FFI = {"0.6.18": "0.1.15.post2", "0.7.2.post1": "0.1.11"}
# What `import flashinfer.autotuner` and `flashinfer.fused_moe` need beyond torch and numpy
# on a machine without CUDA (found by importing each release here).
HELPERS = ("nvidia-ml-py==13.615.71", "tabulate==0.10.0", "tqdm==4.70.1", "einops==0.8.2")
VERSIONS = tuple(TVM_FFI)


def cache_root() -> Path:
    base = os.environ.get("KERNEL_WARMUP_CACHE") or str(Path.home() / ".cache" / "kernel-warmup")
    return Path(base) / "flashinfer-cpu"


def ensure(version: str) -> Path:
    """The folder holding flashinfer==``version`` and its helpers (made once)."""
    site = cache_root() / f"{version}-py{sys.version_info[0]}{sys.version_info[1]}" / "site"
    stamp = site / ".complete"
    if stamp.is_file():
        return site
    wanted = [f"flashinfer-python=={version}", f"apache-tvm-ffi=={TVM_FFI[version]}", *HELPERS]
    print(f"flashinfer_cpu: downloading {', '.join(wanted)} from PyPI into {site}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=site.parent.parent if site.parent.parent.is_dir() else None) as tmp:
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "-d", f"{tmp}/wheels", *wanted],
                       check=True)
        wheels = sorted(str(p) for p in Path(tmp, "wheels").glob("*.whl"))
        subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", f"{tmp}/site", *wheels],
                       check=True)
        site.parent.mkdir(parents=True, exist_ok=True)
        if site.exists():
            import shutil

            shutil.rmtree(site)
        os.replace(f"{tmp}/site", site)
    stamp.write_text(" ".join(wanted) + "\n")
    return site


if __name__ == "__main__":
    print(ensure(sys.argv[1] if len(sys.argv) > 1 else VERSIONS[-1]))
