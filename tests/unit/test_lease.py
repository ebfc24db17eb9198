"""The Lease rules (core/lease.py): who may write what, and when a holder counts as gone."""

from __future__ import annotations

import datetime

import pytest

from warmup_operator.core.lease import Observed, Record, Timing, claim, expired, micro_time, observe, release

T = Timing(lease_s=15, renew_deadline_s=10, retry_s=2)
NOW = "2026-11-27T12:00:00.000000Z"


def held(by: str, transitions: int = 0) -> Record:
    return Record(holder=by, lease_s=15, acquire_time="a", renew_time="r", transitions=transitions)


def test_record_round_trips_through_a_lease_spec():
    rec = held("a", transitions=3)
    assert Record.from_lease({"spec": rec.to_spec()}) == rec
    assert Record.from_lease(None) is None
    assert Record.from_lease({"spec": {"leaseDurationSeconds": "x", "leaseTransitions": -1}}) == Record()


def test_no_lease_is_taken_at_once():
    seen = observe(None, None, now=100.0)
    got = claim(None, seen, "me", 100.0, NOW, T)
    assert got == Record(holder="me", lease_s=15, acquire_time=NOW, renew_time=NOW, transitions=0)


def test_our_own_lease_is_renewed_keeping_acquire_time():
    mine = held("me", transitions=2)
    got = claim(mine, observe(None, mine, 0.0), "me", 0.0, NOW, T)
    assert got is not None and got.holder == "me" and got.renew_time == NOW
    assert got.acquire_time == "a" and got.transitions == 2


def test_another_holder_is_waited_for_until_unchanged_for_a_whole_duration():
    other = held("other")
    seen = observe(None, other, now=100.0)
    assert claim(other, seen, "me", 100.0 + 15.0, NOW, T) is None  # exactly the duration: still theirs
    got = claim(other, seen, "me", 100.0 + 15.1, NOW, T)
    assert got is not None and got.holder == "me" and got.transitions == 1


def test_a_renewal_restarts_the_watchers_clock():
    first = held("other")
    seen = observe(None, first, now=0.0)
    renewed = Record(holder="other", lease_s=15, acquire_time="a", renew_time="r2")
    seen = observe(seen, renewed, now=14.0)
    assert seen.changed_at == 14.0
    assert claim(renewed, seen, "me", 20.0, NOW, T) is None
    assert observe(seen, renewed, now=25.0).changed_at == 14.0  # the same record: the clock runs on


def test_a_released_lease_is_free():
    free = Record(holder="", lease_s=1, transitions=4)
    got = claim(free, observe(None, free, 50.0), "me", 50.0, NOW, T)
    assert got is not None and got.holder == "me" and got.transitions == 5
    assert expired(Observed(free, 50.0), 50.0)


def test_release_only_gives_up_our_own():
    assert release(held("other"), "me", NOW) is None
    out = release(held("me", 1), "me", NOW)
    assert out is not None and out.holder == "" and out.lease_s == 1 and out.transitions == 1


@pytest.mark.parametrize("timing, flag", [
    (Timing(10, 10, 2), "--leader-elect-renew-deadline"),
    (Timing(15, 10, 9), "--leader-elect-retry-period"),
    (Timing(0, 10, 2), "must be > 0"),
])
def test_unsafe_timings_name_the_flag(timing, flag):
    assert flag in (timing.problem() or "")


def test_default_timing_is_safe():
    assert Timing().problem() is None


def test_micro_time_is_utc_with_microseconds():
    t = datetime.datetime(2026, 11, 27, 13, 0, 1, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert micro_time(t) == "2026-11-27T12:00:01.000005Z"
