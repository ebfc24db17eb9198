"""Real torch.distributed over gloo, several processes: broadcast, write, verify, timeouts."""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import pytest

pytest.importorskip("torch.distributed")

from dist_jobs import MAGIC, ShareJob

from kernel_warmer.dist.workers import run_local_workers
from kernel_warmer.spec import DistributedSection


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pods(job, pods: int, per_pod: int, timeout_s=20.0, start_pods=None, stale_after_s=3.0):
    """Run ``pods`` pods of ``per_pod`` workers each (threads stand in for pods)."""
    port = free_port()
    outcomes = {}

    def pod(i):
        spec = DistributedSection(world_size=pods, rank=i, master_addr="127.0.0.1", master_port=port)
        outcomes[i] = run_local_workers(job, per_pod, env={}, spec=spec, timeout_s=timeout_s,
                                        total_timeout_s=120, stale_after_s=stale_after_s)

    threads = [threading.Thread(target=pod, args=(i,)) for i in (start_pods or range(pods))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_two_pods_of_two_ranks_agree_and_local_rank0_writes(tmp_path):
    outcomes = run_pods(ShareJob(str(tmp_path)), pods=2, per_pod=2)
    flat = [o for i in sorted(outcomes) for o in outcomes[i]]
    assert all(o.ok for o in flat), [o.error for o in flat]
    results = [o.result for o in flat]
    assert sorted(r["rank"] for r in results) == [0, 1, 2, 3]
    expected = MAGIC + bytes((i * 7 + 3) % 251 for i in range(200_000))
    sha = hashlib.sha256(expected).hexdigest()
    for node in (0, 1):  # each node's local rank 0 wrote the exact bytes, atomically (no temp left)
        folder = tmp_path / f"node{node}" / "env-test"
        assert (folder / "autotune.json").read_bytes() == expected
        assert [p.name for p in folder.iterdir()] == ["autotune.json"]
    for r in results:
        assert r["sha256"] == sha and r["size"] == len(expected) and r["loaded"] is True
        assert r["wrote"] == (r["rank"] % 2 == 0)
        assert [g["rank"] for g in r["per_rank"]] == [0, 1, 2, 3]
        assert {g["sha_file"] for g in r["per_rank"]} == {sha}


def test_hash_mismatch_fails_every_rank_naming_the_rank(tmp_path):
    outcomes = run_pods(ShareJob(str(tmp_path), tamper_rank=2), pods=1, per_pod=3)
    flat = outcomes[0]
    assert not any(o.ok for o in flat)
    for o in flat:
        assert "tactic cache disagreement" in o.error and "rank 2" in o.error, o.error
        assert "rank 0 " not in o.error and "rank 1 " not in o.error


def test_rank_that_never_joins_is_named_within_the_timeout(tmp_path):
    start = time.monotonic()
    # a world of 2 pods x 2 ranks, but pod 1 (ranks 2 and 3) never starts
    outcomes = run_pods(ShareJob(str(tmp_path)), pods=2, per_pod=2, timeout_s=4, start_pods=[0])
    elapsed = time.monotonic() - start
    assert elapsed < 40, elapsed
    for o in outcomes[0]:
        assert not o.ok and "[2, 3] never joined" in o.error, o.error


def test_rank_that_dies_mid_protocol_is_named(tmp_path):
    start = time.monotonic()
    outcomes = run_pods(ShareJob(str(tmp_path), die_rank=2), pods=1, per_pod=3, timeout_s=8)
    elapsed = time.monotonic() - start
    assert elapsed < 60, elapsed
    by_rank = {o.local_rank: o for o in outcomes[0]}
    assert by_rank[2].exitcode == 3
    for r in (0, 1):
        assert not by_rank[r].ok and "rank(s) [2]" in by_rank[r].error, by_rank[r].error


def test_rank0_death_is_named_by_the_waiting_ranks(tmp_path):
    outcomes = run_pods(ShareJob(str(tmp_path), die_rank=0), pods=1, per_pod=2, timeout_s=8)
    other = outcomes[0][1]
    assert not other.ok and ("rank 0" in other.error or "[0]" in other.error), other.error
