"""Cache faults, for real (compile-only sm_90 on this CPU, separate processes): many
concurrent warmers, a warmer SIGKILLed at each stage, a full and a read-only volume,
foreign entries in the same folder, and readers racing a writer.

Extends test_triton_compile.py (one warmer, damage repair, two concurrent warmers)
and test_cache_manifest.py (truncated/bit-flipped files and manifests, lock).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")

from kernel_warmer.faults import FAULT_ENV
from support.sites import FORK_SITE
from kernel_warmer.files import atomic_write_bytes

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer"))
ENV.pop(FAULT_ENV, None)
ONE_LAYER = {"layers": [{"numHeads": 4, "numKvHeads": 2, "headSize": 64}]}
TWO_LAYERS = {"layers": [{"numHeads": 4, "numKvHeads": 2, "headSize": 64},
                         {"numHeads": 4, "numKvHeads": 2, "headSize": 64, "slidingWindow": 64}]}


def plan_file(tmp_path: Path, doc: dict, name: str = "plan.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def argv(sub: str, plan: Path, cache: Path, *extra: str, target: str = "sm_90") -> list[str]:
    args = [sys.executable, "-m", "kernel_warmer", sub, "--plan", str(plan), "--cache-dir", str(cache),
            "--target", target, "--no-flashinfer", *FORK_SITE, *extra]
    if sub == "run":
        args += ["--termination-log", "/nonexistent/termination-log"]
    return args


def run(plan: Path, cache: Path, *extra: str, fault: str = "", target: str = "sm_90") -> subprocess.CompletedProcess:
    env = dict(ENV, **({FAULT_ENV: fault} if fault else {}))
    return subprocess.run(argv("run", plan, cache, *extra, target=target), capture_output=True, text=True,
                          env=env, timeout=300)


def summary(out: subprocess.CompletedProcess) -> dict:
    return json.loads(out.stdout)


def is_warm(plan: Path, cache: Path, target: str = "sm_90") -> bool:
    out = subprocess.run(argv("check", plan, cache, target=target), capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode == 0


def cubins(cache: Path) -> list[Path]:
    return sorted((cache / "triton").rglob("*.cubin"))


# --- concurrency ---------------------------------------------------------------------------


def test_eight_concurrent_warmers_compile_once_and_all_succeed(tmp_path):
    cache, plan = tmp_path / "cache", plan_file(tmp_path, ONE_LAYER)
    procs = [subprocess.Popen(argv("run", plan, cache, "--workers", "1"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(8)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-400:] for o in outs]
    sums = [json.loads(o[0]) for o in outs]
    assert sum(s["triton"]["compiled"] for s in sums) == 1, [s["triton"] for s in sums]
    assert sum(s["triton"]["hit"] for s in sums) == 7
    assert sum(bool(s["details"].get("warm")) for s in sums) == 7  # verified, not recompiled
    assert len(cubins(cache)) == 1
    assert len(list((cache / "manifests").glob("*.json"))) == 1
    assert not list(cache.rglob(".*.tmp"))
    assert is_warm(plan, cache)


# --- SIGKILL at every stage -------------------------------------------------------------------

STAGES = ["locked", "worker-compiled", "compiled", "atomic-write", "manifest-written"]


@pytest.mark.parametrize("stage", STAGES)
def test_warmer_killed_at_each_stage_then_next_run_repairs(tmp_path, stage):
    cache, plan = tmp_path / "cache", plan_file(tmp_path, ONE_LAYER)
    killed = run(plan, cache, fault=stage)
    if stage == "worker-compiled":
        # the worker dies, the warmer itself reports it (and must not record a manifest)
        assert killed.returncode == 1, killed.stderr
        s = summary(killed)
        assert s["status"] == "failed" and "compile worker died" in s["error"], s
    else:
        assert killed.returncode == -9, (killed.returncode, killed.stderr[-500:])
        assert killed.stdout == ""  # no summary: Kubernetes shows the crash; the operator reads the log
    leftovers = list(cache.rglob(".*.tmp"))
    assert bool(leftovers) == (stage == "atomic-write"), leftovers
    # Only a run that got its manifest in place counts as warm: a kill before that is cold.
    assert is_warm(plan, cache) == (stage == "manifest-written")

    again = run(plan, cache)
    assert again.returncode == 0, again.stderr[-800:]
    s = summary(again)
    assert s["status"] == "ok"
    if stage == "manifest-written":
        assert s["details"].get("warm") and s["triton"]["compiled"] == 0
    elif stage in ("compiled", "atomic-write", "worker-compiled"):
        # Triton's entry was complete (Triton renames it into place): found, not rebuilt
        assert s["triton"] == {"compiled": 0, "hit": 1, "skipped": 0, "failed": 0}, s["triton"]
    else:
        assert s["triton"]["compiled"] == 1
    if stage == "atomic-write":
        assert "removed 1 temp file(s)" in again.stderr
    assert not list(cache.rglob(".*.tmp"))
    assert is_warm(plan, cache)
    assert len(cubins(cache)) == 1


def test_lock_is_not_wedged_by_a_killed_holder(tmp_path):
    """A warmer killed while holding the lock: the next one gets it at once (flock)."""
    cache, plan = tmp_path / "cache", plan_file(tmp_path, ONE_LAYER)
    assert run(plan, cache, fault="locked").returncode == -9
    start = time.monotonic()
    out = run(plan, cache)
    assert out.returncode == 0 and "waited" not in out.stderr, out.stderr
    assert time.monotonic() - start < 60


# --- full disk, read-only volume ------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True)


def test_full_volume_fails_clearly_records_nothing_and_recovers(tmp_path):
    plan = plan_file(tmp_path, ONE_LAYER)
    with tmpfs(tmp_path / "small", "48k") as cache:
        out = run(plan, cache)
        assert out.returncode == 1, out.stderr[-800:]
        s = summary(out)
        assert s["status"] == "failed" and "is full (ENOSPC" in s["error"] and str(cache) in s["error"], s["error"]
        assert not list((cache / "manifests").glob("*.json")) if (cache / "manifests").exists() else True
        assert not is_warm(plan, cache)
        ignored = run(plan, cache, "--failure-policy", "ignore")
        assert ignored.returncode == 0 and summary(ignored)["status"] == "failed"  # the server starts cold

        remount(cache, "size=32m")  # the operator's fix: a bigger volume
        ok = run(plan, cache)
        assert ok.returncode == 0, ok.stderr[-800:]
        assert summary(ok)["status"] == "ok"
        assert is_warm(plan, cache)


def test_read_only_volume_warm_is_ok_cold_is_a_clear_failure(tmp_path):
    plan, other = plan_file(tmp_path, ONE_LAYER), plan_file(tmp_path, TWO_LAYERS, "other.json")
    with tmpfs(tmp_path / "ro", "32m") as cache:
        assert run(plan, cache).returncode == 0
        remount(cache, "ro")
        try:
            warm = run(plan, cache)
            assert warm.returncode == 0, warm.stderr[-800:]
            s = summary(warm)
            assert s["status"] == "ok" and s["details"].get("warm") and "read-only" in warm.stderr
            assert is_warm(plan, cache)

            cold = run(other, cache)
            assert cold.returncode == 1
            s = summary(cold)
            assert s["status"] == "failed" and "read-only and not warm" in s["error"] and str(cache) in s["error"]
            assert run(other, cache, "--failure-policy", "ignore").returncode == 0
        finally:
            remount(cache, "rw")


# --- foreign entries: another GPU model, another version ---------------------------------------


def test_other_gpu_models_and_versions_in_one_folder_are_isolated(tmp_path):
    cache, plan = tmp_path / "cache", plan_file(tmp_path, ONE_LAYER)
    s90 = summary(run(plan, cache))
    # Another GPU model sharing the volume: its own entries and manifest, nothing reused.
    s80 = summary(run(plan, cache, target="sm_80"))
    assert s80["triton"]["compiled"] == 1 and s80["cacheKey"] != s90["cacheKey"]
    assert len(cubins(cache)) == 2
    # Another Triton build (its TRITON_* env is in the key) must not trust these entries either.
    other_env = dict(ENV, TRITON_DEFAULT_FP_FUSION="0")
    out = subprocess.run(argv("check", plan, cache), capture_output=True, text=True, env=other_env, timeout=60)
    assert out.returncode == 1, out.stdout
    # Foreign files of unknown versions in every folder: left alone, never read as ours.
    foreign = {
        cache / "triton" / "ZZZZforeignhash" / "kernel.cubin": b"not a cubin",
        cache / "flashinfer" / "env-from-flashinfer-0.1" / "autotune.json": b'{"v": 0}',
        cache / "manifests" / ("f" * 32 + ".json"): json.dumps({"schema": 0, "key": "x", "files": "?"}).encode(),
    }
    for p, data in foreign.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for target in ("sm_90", "sm_80"):
        assert is_warm(plan, cache, target=target)
        s = summary(run(plan, cache, target=target))
        assert s["status"] == "ok" and s["details"].get("warm")
    assert all(p.read_bytes() == data for p, data in foreign.items())


# --- readers never see half a file ------------------------------------------------------------


def _writer(path: str, rounds: int) -> None:
    for i in range(rounds):
        atomic_write_bytes(Path(path), bytes([65 + i % 2]) * (1 << 20) + b"END")


def test_readers_racing_a_writer_see_whole_files_only(tmp_path):
    target = tmp_path / "flashinfer" / "env" / "autotune.json"
    atomic_write_bytes(target, b"A" * (1 << 20) + b"END")
    ctx = multiprocessing.get_context("spawn")
    w = ctx.Process(target=_writer, args=(str(target), 60))
    w.start()
    reads = 0
    while w.is_alive() or reads < 10:
        data = target.read_bytes()
        assert len(data) == (1 << 20) + 3 and data.endswith(b"END"), len(data)
        assert data[:1] * (1 << 20) == data[:-3], "a torn mix of two versions"
        reads += 1
    w.join(timeout=60)
    assert w.exitcode == 0 and reads >= 10
    assert [p.name for p in target.parent.iterdir()] == ["autotune.json"]
