"""vLLM's real prefill-attention kernel module, fetched from its PyPI wheel for tests.

Nothing of vLLM's code is committed: ``ensure()`` downloads the wheel once
(``pip download --no-deps``, cached under ``$KERNEL_WARMUP_CACHE/vllm-wheels``), extracts
only the kernel module and the one light helper it imports (``vllm/utils/math_utils.py``)
into an ignored folder, and writes small stand-ins for the heavy parents the kernel imports
(``vllm.platforms``, ``vllm.triton_utils``, and from 0.34 ``vllm.utils.mem_utils``, whose
shared-memory query goes through vLLM's compiled ops) and empty package markers. The kernel
file itself is vLLM's, byte for byte, at vLLM's own module path, so Triton's cache key
(which hashes the kernel's source) is the one a real vLLM install computes. One folder per
release: ``.vllm-kernel/<version>``.

    python tests/support/vllm_kernel.py [--dest .vllm-kernel/0.33.0] [--version 0.33.0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

VLLM_VERSION = "0.33.0"
# The releases the tests compile: the oldest the warmer knows, the one it was built on, the newest
VERSIONS = ("0.26.0", "0.33.0", "0.34.0")
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEST = ROOT / ".vllm-kernel"
KERNEL = "vllm/v1/attention/ops/triton_prefill_attention.py"
REAL_FILES = (KERNEL, "vllm/utils/math_utils.py")
PACKAGES = ("vllm/v1", "vllm/v1/attention", "vllm/v1/attention/ops", "vllm/utils")

# vllm.platforms stand-in: answers what the kernel asks (is_rocm, is_cuda_alike,
# has_device_capability) for the GPU this process runs on.
PLATFORMS = '''"""Test stand-in for vllm.platforms (the real one imports all of vLLM)."""


class _Cuda:
    def is_rocm(self):
        return False

    def is_cuda(self):
        return True

    def is_cuda_alike(self):
        return True

    def get_device_capability(self):
        import torch

        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor

    def has_device_capability(self, capability):
        return self.get_device_capability() >= capability

    def is_xpu(self):
        return False


current_platform = _Cuda()
'''

# vllm.utils.mem_utils stand-in (0.34): the shared-memory query vLLM answers with
# cudaDevAttrMaxSharedMemoryPerBlockOptin through its compiled ops; torch reads the same.
MEM_UTILS = '''"""Test stand-in for vllm.utils.mem_utils (the real one imports vLLM's compiled ops)."""


def get_max_shared_memory_bytes(gpu: int = 0) -> int:
    import torch

    return int(torch.cuda.get_device_properties(gpu).shared_memory_per_block_optin)
'''

TRITON_UTILS = '''"""Test stand-in for vllm.triton_utils: the names the kernel imports."""
import triton
import triton.language as tl
'''


def cache_root() -> Path:
    base = os.environ.get("KERNEL_WARMUP_CACHE") or str(Path.home() / ".cache" / "kernel-warmup")
    return Path(base) / "vllm-wheels"


def wheel_path(version: str = VLLM_VERSION) -> Path:
    """The vLLM wheel from PyPI (downloaded once; 340 MB for 0.33.0)."""
    folder = cache_root() / version
    found = sorted(folder.glob(f"vllm-{version}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    print(f"vllm_kernel: downloading vllm=={version} from PyPI (no dependencies) into {folder}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64",
                    "--disable-pip-version-check", "-q", "-d", str(folder), f"vllm=={version}"], check=True)
    found = sorted(folder.glob(f"vllm-{version}-*.whl"))
    if not found:
        raise RuntimeError(f"pip download left no vllm-{version} wheel in {folder}")
    return found[0]


def ensure(dest: Path | None = None, version: str = VLLM_VERSION) -> Path:
    """``dest`` (default ``.vllm-kernel/<version>``) holds an importable ``vllm`` with vLLM's
    real kernel; returns ``dest``."""
    dest = dest or DEFAULT_DEST / version
    stamp = dest / "vllm" / ".source"
    if stamp.is_file() and stamp.read_text().startswith(f"vllm=={version} "):
        return dest
    whl = wheel_path(version)
    with zipfile.ZipFile(whl) as zf:
        for name in REAL_FILES:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
    for pkg in PACKAGES:
        (dest / pkg / "__init__.py").touch()
    (dest / "vllm" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    meta = dest / f"vllm-{version}.dist-info"  # the warmer reads the release from package metadata
    meta.mkdir(exist_ok=True)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    (dest / "vllm" / "platforms").mkdir(exist_ok=True)
    (dest / "vllm" / "platforms" / "__init__.py").write_text(PLATFORMS)
    (dest / "vllm" / "triton_utils").mkdir(exist_ok=True)
    (dest / "vllm" / "triton_utils" / "__init__.py").write_text(TRITON_UTILS)
    if b"vllm.utils.mem_utils" in (dest / KERNEL).read_bytes():
        (dest / "vllm" / "utils" / "mem_utils.py").write_text(MEM_UTILS)
    digest = hashlib.sha256((dest / KERNEL).read_bytes()).hexdigest()
    stamp.write_text(f"vllm=={version} {whl.name} kernel-sha256={digest}\n")
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=None)
    ap.add_argument("--version", default=VLLM_VERSION)
    args = ap.parse_args()
    dest = ensure(args.dest, args.version)
    print((dest / "vllm" / ".source").read_text().strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
