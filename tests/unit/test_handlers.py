"""The kopf wiring: one index and one event handler per workload kind, from core/kinds.py."""

from __future__ import annotations

import pytest

pytest.importorskip("kopf")

from warmup_operator import handlers
from warmup_operator.core.kinds import KINDS


def test_each_kind_gets_one_index_and_one_event_handler(monkeypatch):
    calls: list[tuple[str, tuple, str]] = []

    def recorder(what):
        def decorator_factory(*resource, id, **_):
            calls.append((what, resource, id))
            return lambda fn: fn
        return decorator_factory

    monkeypatch.setattr(handlers.kopf, "index", recorder("index"))
    monkeypatch.setattr(handlers.kopf.on, "event", recorder("event"))
    handlers.register_kinds()
    want = {(k.group, k.version, k.plural) for k in KINDS.values()}
    for what in ("index", "event"):
        assert {resource for w, resource, _ in calls if w == what} == want
    ids = [i for _, _, i in calls]
    assert len(ids) == len(set(ids)) == 2 * len(KINDS)


def test_workloads_come_from_each_kinds_index():
    deploy, sts = KINDS["Deployment"], KINDS["StatefulSet"]
    indexes = {handlers.index_id(deploy): {"ns": [{"d": 1}]}, handlers.index_id(sts): {"ns": [{"s": 1}], "other": [{}]},
               "warmup_index": {"ns": ["not a workload"]}}
    assert handlers._workloads("ns", indexes) == [(deploy, {"d": 1}), (sts, {"s": 1})]
    assert handlers._workloads("none", indexes) == []


def test_the_resync_timer_takes_the_configured_interval_once():
    """Issue 24 item 4: no config read at import time; __main__ registers the timer once
    the configuration is read."""
    import kopf

    handlers.register_resync(7.0)
    handlers.register_resync(99.0)  # a second call changes nothing
    timers = [h for h in kopf.get_default_registry()._spawning.get_all_handlers() if h.id == "kw_resync"]
    assert len(timers) == 1 and timers[0].interval == 7.0 and timers[0].initial_delay == 7.0
