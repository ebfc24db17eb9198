"""timeoutSeconds bounds the whole warmup (issue 11, item 7): a FIFO where config.json
should be and a ptxas that never returns both end at the deadline, every process the
warmer started is gone, the summary says so, and under failurePolicy Ignore the init
container exits 0 so the server starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel_warmer.deadline import Watchdog, descendants, kill_tree

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer"))
ENV.pop("KUBERNETES_SERVICE_HOST", None)


def run_spec(tmp_path: Path, spec: dict, env: dict = ENV, limit: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    f = tmp_path / "spec.json"
    f.write_text(json.dumps({"cacheDir": str(tmp_path / "cache"), **spec}))
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "kernel_warmer", "run", "--spec", str(f),
                          "--termination-log", str(tmp_path / "term")], capture_output=True, text=True,
                         env=env, timeout=limit)
    return out, time.monotonic() - start


@pytest.mark.parametrize("policy, code", [("Ignore", 0), ("Fail", 1)])
def test_fifo_config_json_ends_at_the_deadline(tmp_path, policy, code):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    out, took = run_spec(tmp_path, {"model": {"configPath": str(fifo)}, "timeoutSeconds": 2,
                                    "failurePolicy": policy})
    assert out.returncode == code, out.stderr
    assert took < 20
    summary = json.loads(out.stdout)
    assert summary["status"] == "failed" and "timeoutSeconds (2s)" in summary["error"]
    assert json.loads((tmp_path / "term").read_text())["status"] == "failed"


def test_hung_ptxas_is_killed_with_its_workers_at_the_deadline(tmp_path):
    pytest.importorskip("triton")
    import triton

    real = Path(triton.__file__).parent / "backends/nvidia/bin/ptxas"
    pids = tmp_path / "ptxas.pids"
    fake = tmp_path / "ptxas"
    fake.write_text(f"#!/bin/sh\necho $$ >> {pids}\n"
                    f"if [ \"$1\" = \"--version\" ]; then exec {real} --version; fi\nexec sleep 600\n")
    fake.chmod(0o755)
    env = dict(ENV, TRITON_PTXAS_PATH=str(fake))
    spec = {"model": {"layers": [{"numHeads": 4, "numKvHeads": 2, "headSize": 64}]}, "timeoutSeconds": 30,
            "failurePolicy": "Ignore", "triton": {"compileOnlyTarget": "sm_90", "workers": 1, "provider": "builtin"},
            "engine": {"attentionBackend": "TRITON_ATTN", "kvCacheDtype": "nvfp4"},  # support/sites.py's fork site
            "flashinfer": {"enabled": False}}
    out, took = run_spec(tmp_path, spec, env=env, limit=200)
    assert out.returncode == 0, out.stderr[-800:]
    assert took < 70
    summary = json.loads(out.stdout)
    assert summary["status"] == "failed" and "timeoutSeconds (30s)" in summary["error"], summary
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) >= 2, "the compile never reached ptxas"  # --version, then the hung compile
    time.sleep(0.5)
    for pid in started:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_kill_tree_kills_grandchildren(tmp_path):
    p = subprocess.Popen(["sh", "-c", "sleep 600 & sleep 600 & wait"])
    try:
        deadline = time.monotonic() + 5
        while len(descendants(p.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchildren = descendants(p.pid)
        assert len(grandchildren) == 2
        assert kill_tree(p.pid) == 2
        for pid in grandchildren:
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}").exists() else ""
                if stat and stat.rsplit(")", 1)[1].split()[0] == "Z":
                    break
                time.sleep(0.05)
    finally:
        p.kill()
        p.wait()


def test_watchdog_fires_once_and_not_after_cancel():
    fired: list[float] = []
    Watchdog(0.1, fired.append).start()
    dog = Watchdog(0.1, fired.append).start()
    dog.cancel()
    time.sleep(0.5)
    assert len(fired) == 1 and fired[0] >= 0.1
