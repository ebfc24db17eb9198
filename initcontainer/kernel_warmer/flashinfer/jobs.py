"""How many FlashInfer JIT compile jobs this container can run at once (stdlib only).

FlashInfer runs ninja with ``-j $MAX_JOBS`` (unset: ninja's default, CPUs seen + 2, which
inside a container is the *host's* count: 34 nvcc on a 32-core node, issue 12). Each nvcc
on FlashInfer's CUTLASS fused-MoE sources holds gigabytes, so the warmer sizes MAX_JOBS
from the container's own cgroup limits:

    jobs = min(CPUs of the quota, (memory limit - RESERVE) // JOB_MEMORY) // nvcc_threads

``JOB_MEMORY`` is 4 GiB per nvcc job: a conservative *estimate* for CUTLASS MoE
translation units, not yet measured on this project's GPU hosts (measure the peak RSS of
one nvcc on ``fused_moe_90`` and replace it). ``RESERVE`` leaves room for the warmer
process itself (torch, CUDA context).

``FLASHINFER_NVCC_THREADS`` is *not* chosen here: FlashInfer writes ``--threads=N`` into
every nvcc command of the module's build.ninja (jit/core.py gen_jit_spec, cpp_ext.py), and
ninja rebuilds an object whose command changed. A warmer that picked its own N would make
the serving process, which has FlashInfer's default (1) or the user's value, rebuild the
whole module. So the warmer keeps the value the serving container has (env, else 1) and
divides the job count by it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

GiB = 1 << 30
JOB_MEMORY = 4 * GiB  # per nvcc job on CUTLASS MoE sources: an estimate, to be measured
RESERVE = 2 * GiB  # the warmer process itself
# cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX * page size).
V1_UNLIMITED = 1 << 60
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Limits:
    cpus: Optional[float]  # CPU quota in CPUs (None: no quota)
    memory: Optional[int]  # bytes (None: no limit)
    source: str  # "cgroup v2", "cgroup v1" or "none"


@dataclass(frozen=True)
class JitJobs:
    max_jobs: int
    nvcc_threads: int
    why: str  # one log line: the inputs and which bound won

    def env(self) -> dict[str, str]:
        return {"MAX_JOBS": str(self.max_jobs)}


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2(root: Path) -> Optional[Limits]:
    cpu_max, mem_max = _read(root / "cpu.max"), _read(root / "memory.max")
    if cpu_max is None and mem_max is None:
        return None
    cpus = None
    if cpu_max:
        quota, _, period = cpu_max.partition(" ")
        if quota != "max" and period:
            cpus = int(quota) / int(period)
    memory = int(mem_max) if mem_max and mem_max != "max" else None
    return Limits(cpus, memory, "cgroup v2")


def _v1(root: Path) -> Optional[Limits]:
    cpu_dir = next((root / d for d in ("cpu,cpuacct", "cpu") if (root / d / "cpu.cfs_quota_us").exists()), None)
    mem = _read(root / "memory" / "memory.limit_in_bytes")
    if cpu_dir is None and mem is None:
        return None
    cpus = None
    if cpu_dir is not None:
        quota, period = _read(cpu_dir / "cpu.cfs_quota_us"), _read(cpu_dir / "cpu.cfs_period_us")
        if quota and period and int(quota) > 0:
            cpus = int(quota) / int(period)
    memory = int(mem) if mem and int(mem) < V1_UNLIMITED else None
    return Limits(cpus, memory, "cgroup v1")


def read_limits(root: Path = CGROUP_ROOT) -> Limits:
    """The container's CPU quota and memory limit (v2 ``cpu.max``/``memory.max``, else v1
    ``cpu.cfs_quota_us``/``memory.limit_in_bytes``); unreadable files mean no limit."""
    try:
        return _v2(root) or _v1(root) or Limits(None, None, "none")
    except ValueError:  # a malformed file: size from the CPU count alone
        return Limits(None, None, "none (unreadable cgroup files)")


def _positive_int(value: Optional[str]) -> Optional[int]:
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def size_jobs(limits: Limits, host_cpus: int, env: Mapping[str, str]) -> JitJobs:
    """MAX_JOBS for FlashInfer's ninja from the limits (a user's MAX_JOBS wins)."""
    threads = _positive_int(env.get("FLASHINFER_NVCC_THREADS")) or 1
    user = _positive_int(env.get("MAX_JOBS"))
    if user:
        return JitJobs(user, threads, f"MAX_JOBS={user} (set in the environment)")
    cpus = max(1, int(min(host_cpus, limits.cpus) if limits.cpus else host_cpus))
    by_cpu = max(1, cpus // threads)
    parts = [f"{cpus} CPU(s)"]
    jobs = by_cpu
    if limits.memory is not None:
        by_mem = max(1, (limits.memory - RESERVE) // (JOB_MEMORY * threads))
        parts.append(f"{limits.memory / GiB:.1f} GiB memory at {JOB_MEMORY // GiB} GiB per nvcc job (estimate)")
        jobs = min(by_cpu, by_mem)
    bound = "memory" if limits.memory is not None and jobs < by_cpu else "CPU"
    return JitJobs(jobs, threads, f"MAX_JOBS={jobs} FLASHINFER_NVCC_THREADS={threads} from {', '.join(parts)} "
                                  f"({limits.source}; bound by {bound})")


def plan_jobs(env: Optional[Mapping[str, str]] = None, root: Path = CGROUP_ROOT) -> JitJobs:
    env = os.environ if env is None else env
    return size_jobs(read_limits(root), os.cpu_count() or 1, env)
