"""FlashInfer JIT job sizing from cgroup limits (fake cgroup trees), and the heartbeat."""

from __future__ import annotations

import time

import pytest

from kernel_warmer.flashinfer.jobs import GiB, Limits, read_limits, size_jobs
from kernel_warmer.heartbeat import Heartbeat


def cgroup(tmp_path, files: dict[str, str]):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text + "\n")
    return tmp_path


@pytest.mark.parametrize("files, want", [
    ({"cpu.max": "400000 100000", "memory.max": str(16 * GiB)}, Limits(4.0, 16 * GiB, "cgroup v2")),
    ({"cpu.max": "max 100000", "memory.max": "max"}, Limits(None, None, "cgroup v2")),
    ({"cpu.max": "150000 100000"}, Limits(1.5, None, "cgroup v2")),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "800000", "cpu,cpuacct/cpu.cfs_period_us": "100000",
      "memory/memory.limit_in_bytes": str(32 * GiB)}, Limits(8.0, 32 * GiB, "cgroup v1")),
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000",
      "memory/memory.limit_in_bytes": "9223372036854771712"}, Limits(None, None, "cgroup v1")),
    ({}, Limits(None, None, "none")),
    ({"cpu.max": "lots 100000"}, Limits(None, None, "none (unreadable cgroup files)")),
], ids=["v2", "v2-unlimited", "v2-fractional", "v1", "v1-unlimited", "none", "malformed"])
def test_read_limits(tmp_path, files, want):
    assert read_limits(cgroup(tmp_path, files)) == want


@pytest.mark.parametrize("limits, host, env, jobs, threads, bound", [
    (Limits(16.0, 128 * GiB, "cgroup v2"), 64, {}, 16, 1, "CPU"),       # quota, not the host's 64
    (Limits(32.0, 16 * GiB, "cgroup v2"), 64, {}, 3, 1, "memory"),      # (16 - 2) // 4
    (Limits(None, 64 * GiB, "cgroup v2"), 8, {}, 8, 1, "CPU"),          # no quota: host CPUs
    (Limits(None, None, "none"), 32, {}, 32, 1, "CPU"),
    (Limits(2.0, 3 * GiB, "cgroup v2"), 8, {}, 1, 1, "memory"),         # never below one job
    (Limits(1.5, None, "cgroup v2"), 8, {}, 1, 1, "CPU"),               # fractional quota rounds down
    (Limits(16.0, 64 * GiB, "cgroup v1"), 64, {"FLASHINFER_NVCC_THREADS": "4"}, 3, 4, "memory"),
    (Limits(16.0, 64 * GiB, "cgroup v1"), 64, {"MAX_JOBS": "5"}, 5, 1, None),  # the user's value wins
    (Limits(16.0, 64 * GiB, "cgroup v1"), 64, {"MAX_JOBS": "zero", "FLASHINFER_NVCC_THREADS": "x"}, 15, 1, "memory"),
])
def test_size_jobs(limits, host, env, jobs, threads, bound):
    got = size_jobs(limits, host, env)
    assert (got.max_jobs, got.nvcc_threads) == (jobs, threads)
    assert got.env() == {"MAX_JOBS": str(jobs)}  # FLASHINFER_NVCC_THREADS is never set: it is in the build command
    assert f"MAX_JOBS={jobs}" in got.why and (bound is None or f"bound by {bound}" in got.why)


def test_heartbeat_names_phase_op_elapsed_and_progress():
    lines: list[str] = []
    with Heartbeat(lines.append, "flashinfer jit", interval_s=0.05) as beat:
        beat.update("fused_moe_90", progress=lambda: "12 object file(s)")
        time.sleep(0.3)
    assert len(lines) >= 3
    assert all(line.startswith("heartbeat: flashinfer jit fused_moe_90 ") for line in lines)
    assert lines[-1].endswith(", 12 object file(s)") and "(phase " in lines[-1]
    count = len(lines)
    time.sleep(0.15)
    assert len(lines) == count  # stopped with the phase


def test_heartbeat_survives_a_failing_progress_probe():
    beat = Heartbeat(lambda s: None, "flashinfer tune")
    beat.update("cutlass_fused_moe", progress=lambda: 1 / 0)
    assert beat.line().endswith("progress unknown (ZeroDivisionError)")
