"""Distributed faults not covered in test_dist_share.py (which has: a rank that
never joins, a rank that dies right after joining, rank 0 dying, a hash mismatch): a rank
that dies *during* the payload broadcast. Real torch.distributed over gloo, processes."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("torch.distributed")

from reliability_jobs import DieInBroadcastJob
from test_dist_share import run_pods

pytestmark = pytest.mark.reliability


def test_rank_dying_mid_broadcast_is_named_by_the_others_within_the_timeout(tmp_path):
    start = time.monotonic()
    outcomes = run_pods(DieInBroadcastJob(str(tmp_path), size=4_000_000, die_in_broadcast_rank=2),
                        pods=1, per_pod=3, timeout_s=6)
    elapsed = time.monotonic() - start
    by_rank = {o.local_rank: o for o in outcomes[0]}
    assert by_rank[2].exitcode == 4
    for r in (0, 1):
        o = by_rank[r]
        assert not o.ok, o
        assert "[2]" in o.error or "rank 2" in o.error, o.error
    assert elapsed < 45, elapsed
    # nothing half-written where the payload goes
    assert not list(tmp_path.rglob("*.tmp"))
