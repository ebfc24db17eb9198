"""devcluster/heartbeat.py: long steps say what they do, that they still run, and how long they took."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "devcluster"))

import heartbeat


def test_a_line_every_interval_and_the_elapsed_time() -> None:
    lines: list[str] = []
    elapsed = heartbeat.run([sys.executable, "-c", "import time; time.sleep(0.5)"], "Building etcd",
                            every_s=0.1, say=lines.append)
    assert lines[0] == "Building etcd ..."
    still = [x for x in lines if x.startswith("  still building etcd: ")]
    assert len(still) >= 3, lines
    assert lines[-1] == f"Building etcd: done in {elapsed:.1f}s" and elapsed >= 0.5


def test_a_failure_says_so_and_raises() -> None:
    lines: list[str] = []
    with pytest.raises(subprocess.CalledProcessError) as exc:
        heartbeat.run([sys.executable, "-c", "raise SystemExit(3)"], "Building etcd", say=lines.append)
    assert exc.value.returncode == 3
    assert lines[-1].startswith("Building etcd: failed (exit 3) after ")
