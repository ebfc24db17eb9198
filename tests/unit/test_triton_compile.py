"""Compile-only for sm_90 on this CPU, for real: cache entries appear, a second run is warm,
damage is repaired, and two concurrent warmers compile each variant once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.sites import FORK_SITE

pytest.importorskip("triton")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer"))


def cmd(sub: str, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kernel_warmer", sub, "--model-config", str(CONFIGS / "mistral-7b-v0.1.json"),
            "--cache-dir", str(cache), "--target", "sm_90", "--no-flashinfer", *FORK_SITE, *extra]


def run(cache: Path, *extra: str) -> dict:
    out = subprocess.run(cmd("run", cache, "--termination-log", str(cache / "termination-log"), *extra),
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def check(cache: Path) -> int:
    return subprocess.run(cmd("check", cache), capture_output=True, text=True, env=ENV, timeout=60).returncode


def cubins(cache: Path) -> list[Path]:
    return sorted((cache / "triton").rglob("*.cubin"))


def test_compile_only_sm90_writes_entries_then_is_warm_then_repairs(tmp_path):
    cache = tmp_path / "cache"
    assert check(cache) == 1
    s = run(cache)
    assert s["status"] == "ok" and s["triton"] == {"compiled": 1, "hit": 0, "skipped": 0, "failed": 0}
    (cubin,) = cubins(cache)
    meta = json.loads(cubin.with_suffix(".json").read_text())
    assert meta["target"]["arch"] == 90 and meta["target"]["backend"] == "cuda"
    assert (cache / "termination-log").exists()
    assert check(cache) == 0

    s2 = run(cache)  # warm: verified from the manifest, nothing compiled
    assert s2["triton"]["hit"] == 1 and s2["triton"]["compiled"] == 0 and s2["details"].get("warm")

    cubin.write_bytes(cubin.read_bytes()[:100])  # a torn write / bad disk
    assert check(cache) == 1
    s3 = run(cache)
    assert s3["triton"]["compiled"] == 1, "the damaged entry must be rebuilt, not trusted"
    assert check(cache) == 0
    (fixed,) = cubins(cache)
    assert fixed.stat().st_size > 1000


def test_manifest_deleted_but_triton_entries_present_counts_hits(tmp_path):
    cache = tmp_path / "cache"
    run(cache)
    for m in (cache / "manifests").iterdir():
        m.unlink()
    assert check(cache) == 1
    s = run(cache)
    assert s["triton"] == {"compiled": 0, "hit": 1, "skipped": 0, "failed": 0}
    assert check(cache) == 0


def test_two_concurrent_runs_compile_each_variant_once(tmp_path):
    cache = tmp_path / "cache"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [
        {"numHeads": 4, "numKvHeads": 2, "headSize": 64},
        {"numHeads": 4, "numKvHeads": 2, "headSize": 64, "slidingWindow": 64},
    ]}))
    args = [sys.executable, "-m", "kernel_warmer", "run", "--plan", str(plan), "--cache-dir", str(cache),
            "--target", "sm_90", "--no-flashinfer", *FORK_SITE, "--termination-log", "/nonexistent/log"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    summaries = [json.loads(o[0]) for o in outs]
    assert sum(s["triton"]["compiled"] for s in summaries) == 2
    assert sorted(s["triton"]["hit"] for s in summaries) == [0, 2]
    assert len(cubins(cache)) == 2
