"""A rank outliving the store's host exits cleanly (exit 0), not with C++ ``terminate``.

Seen on 4x H100 (2026-11-27, bench_autotune_broadcast): rank 0, which hosts the TCPStore,
exited first; a peer's heartbeat thread, a daemon, was inside a failing store call when
that peer's interpreter finalized, and the process aborted (exit 134) after it had written
its result, so the parent counted a good rank as failed. ``Rendezvous.close`` now stops and
joins the thread. Made deterministic here: every beat first spends 0.3 s inside a real TCPStore call with
the GIL released, so the thread is inside one when the peer closes, and an object whose
``__del__`` sleeps holds the interpreter in finalization until that call returns into it.
Without the join every run aborts; the bench's run hit the same window by chance."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed")

from test_dist_share import free_port

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import os, subprocess, sys, time
from datetime import timedelta
sys.path.insert(0, sys.argv[3])
from kernel_warmer.dist.rendezvous import Rendezvous
from kernel_warmer.dist.world import WorldInfo

def world(rank, port):
    return WorldInfo(rank=rank, world_size=2, local_rank=rank, local_world_size=2, node_rank=0,
                     num_nodes=1, master_addr="127.0.0.1", master_port=port, source="single-pod")

class SlowStore:
    # each heartbeat first waits 0.3 s inside a real TCPStore call (C++, GIL released),
    # so the beat thread is almost always inside one, as when a store call hangs or fails
    def __init__(self, store):
        self._store = store
    def add(self, key, n):
        try:
            self._store.wait(["never-set"], timedelta(seconds=0.3))
        except Exception:
            pass
        return self._store.add(key, n)
    def __getattr__(self, name):
        return getattr(self._store, name)

class SlowExit:
    def __del__(self):  # runs while the interpreter finalizes: the window the abort needs
        time.sleep(1.0)

port = int(sys.argv[2])
if sys.argv[1] == "host":  # rank 0: host the store, join, stay up while the peer exits
    Rendezvous(world(0, port), 30, heartbeat_s=0.01).join()
    time.sleep(5)
    os._exit(0)
host = subprocess.Popen([sys.executable, __file__, "host", str(port), sys.argv[3]])
rdv = Rendezvous(world(1, port), 30, heartbeat_s=0.001)
rdv.store = SlowStore(rdv.store)
rdv.join()
time.sleep(0.5)
rdv.close()
slow_exit = SlowExit()
'''


def test_a_rank_whose_store_host_is_gone_still_exits_zero(tmp_path):
    script = tmp_path / "outlive_host.py"
    script.write_text(SCRIPT)

    def once(_: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), "peer", str(free_port()), str(ROOT / "initcontainer")],
                              capture_output=True, text=True, timeout=60)

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(once, range(2)))
    bad = [(r.returncode, r.stderr[-400:]) for r in runs if r.returncode != 0]
    # exit 134 with "terminate called without an active exception" before the fix
    assert not bad, bad


def test_a_rank_that_dies_after_reporting_is_named_with_its_signal():
    """The parent does not count it as a good rank, and says why (the bench's run said only
    ``(1, None)``)."""
    from dist_jobs import AbortAtExitJob

    from kernel_warmer.dist.workers import run_local_workers
    from kernel_warmer.spec import DistributedSection

    outcomes = run_local_workers(AbortAtExitJob(abort_rank=1), 2, env={},
                                 spec=DistributedSection(master_addr="127.0.0.1", master_port=free_port()),
                                 timeout_s=20, total_timeout_s=120, stale_after_s=3)
    by_rank = {o.local_rank: o for o in outcomes}
    assert by_rank[0].ok, by_rank[0]
    assert not by_rank[1].ok and by_rank[1].result == {"rank": 1}
    assert by_rank[1].error == "exited -6 (SIGABRT) after reporting its result", by_rank[1].error
