"""The GPU tests' "no compiler ran in the server" check counts only compilers the probe
itself started: on the GPU run a fused-MoE build elsewhere on the host was counted against
the FP8 probe. A copy of `sleep` named nvcc stands in for a compiler process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from bench_flashinfer_moe import CompilerWatch  # noqa: E402


def test_only_compilers_under_the_probe_are_counted(tmp_path):
    nvcc = tmp_path / "nvcc"
    shutil.copy(shutil.which("sleep"), nvcc)
    # another build on the host: orphaned at once (its shell exits), so not under this process
    out = subprocess.run(["sh", "-c", f"{nvcc} 5 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True)
    elsewhere = int(out.stdout.strip())
    try:
        time.sleep(0.3)
        with CompilerWatch() as watch:
            subprocess.run(["sh", "-c", f"{nvcc} 0.5"], check=True)  # the probe runs a compiler
        pids = {s.split(":")[0] for s in watch.seen}
        assert watch.seen and all(s.endswith(":nvcc") for s in watch.seen)
        assert str(elsewhere) not in pids
    finally:
        os.kill(elsewhere, signal.SIGKILL)
