"""bounded.BoundedDict (issue 24 item 4): every in-memory map of the operator is bounded,
and a test shows it shrinks: metrics' counted runs, the Controller's owner cache, its late
admissions and its apply errors."""

from __future__ import annotations

import pytest

from warmup_operator import metrics
from warmup_operator.bounded import BoundedDict
from warmup_operator.reconcile import Controller


def test_the_least_recently_written_key_is_forgotten_past_the_bound():
    d: BoundedDict[int, str] = BoundedDict(maxsize=3)
    for i in range(10):
        d[i] = str(i)
    assert len(d) == 3 and list(d) == [7, 8, 9] and 0 not in d and d.get(9) == "9"
    d[7] = "again"  # written again: now the newest
    d[10] = "10"
    assert list(d) == [9, 7, 10] and d.pop(7) == "again" and len(d) == 2
    assert d.add("x") and not d.add("x")
    with pytest.raises(ValueError):
        BoundedDict(maxsize=0)


def test_the_operators_maps_are_bounded():
    ctl = Controller(kube=None)
    maps = [ctl.apply_errors, ctl.status._owners, ctl.late, metrics._seen, ctl.prewarm._views, ctl.prewarm._passed,
            ctl.prewarm._problems]
    for m in maps:
        assert isinstance(m, BoundedDict) and m.maxsize == 10_000
    for i in range(10_050):
        ctl.late[("Deployment", "ns", f"w{i}")] = ("h", "why")
    assert len(ctl.late) == 10_000 and ("Deployment", "ns", "w0") not in ctl.late
