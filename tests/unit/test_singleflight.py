"""singleflight.SingleFlight (issue 25 item 3): a nudge never parks a thread behind a run of
its key; the run goes once more with the latest nudge's arguments; entries live only while
their key is in use; the oldest run's age is what liveness reads."""

from __future__ import annotations

import threading
import time

import pytest

from warmup_operator.singleflight import SingleFlight


def test_nudges_during_a_run_return_at_once_and_the_run_goes_once_more_with_the_latest():
    flight: SingleFlight[int, int] = SingleFlight()
    started, release, seen = threading.Event(), threading.Event(), []

    def work(arg: int) -> int:
        seen.append(arg)
        if arg == 0:
            started.set()
            release.wait(5)
        return arg

    holder = threading.Thread(target=lambda: seen.append(("result", flight.run("k", work, 0, wait=True))))
    holder.start()
    assert started.wait(5)
    t0 = time.monotonic()
    assert [flight.run("k", work, i, wait=False) for i in (1, 2, 3)] == [None, None, None]
    assert time.monotonic() - t0 < 0.5  # nobody waited for the run in progress
    release.set()
    holder.join(5)
    assert seen == [0, 3, ("result", 3)]  # one more run, with the latest arguments
    assert len(flight) == 0  # nothing kept once the key is idle


def test_an_idle_key_runs_a_nudge_itself_and_other_keys_never_wait():
    flight: SingleFlight[str, str] = SingleFlight()
    release = threading.Event()
    t = threading.Thread(target=lambda: flight.run("busy", lambda a: release.wait(5) and a, "x", wait=True))
    t.start()
    time.sleep(0.05)
    assert flight.run("other", lambda a: a + "!", "y", wait=False) == "y!"
    release.set()
    t.join(5)


def test_waiters_take_turns_and_every_key_is_dropped_after():
    flight: SingleFlight[int, int] = SingleFlight()
    inside, most = [0], [0]
    lock = threading.Lock()

    def work(arg: int) -> int:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.01)
        with lock:
            inside[0] -= 1
        return arg

    threads = [threading.Thread(target=flight.run, args=(i % 3, work, i), kwargs={"wait": True}) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] <= 3 and len(flight) == 0


def test_a_failing_run_releases_its_key():
    flight: SingleFlight[int, int] = SingleFlight()

    def boom(_: int) -> int:
        raise RuntimeError("api down")

    with pytest.raises(RuntimeError):
        flight.run("k", boom, 1, wait=True)
    assert len(flight) == 0 and flight.run("k", lambda a: a, 2, wait=False) == 2


def test_the_oldest_run_is_what_liveness_reads():
    now = [100.0]
    flight: SingleFlight[int, float] = SingleFlight(clock=lambda: now[0])
    assert flight.oldest_run_s() == 0.0

    def slow(_: int) -> float:
        now[0] += 400
        return flight.oldest_run_s()

    assert flight.run("k", slow, 0, wait=True) == 400
    assert flight.oldest_run_s() == 0.0


def test_a_controllers_event_nudge_never_waits_for_a_running_reconcile_of_its_workload():
    """The storm of the review: every handler thread waited on one workload's lock while its
    holder read the API. A nudge now returns at once (queued) and the holder reads the
    workload once more, with the KernelWarmups the nudge brought."""
    from warmup_operator.core.decide import CRRecord
    from warmup_operator.core.kinds import DEPLOYMENT
    from warmup_operator.reconcile import Controller

    gets, entered, release = [], threading.Event(), threading.Event()
    c = {"name": "vllm", "image": "v:1", "resources": {"limits": {"nvidia.com/gpu": 1}}}
    obj = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "llm", "namespace": "ns", "annotations": {"kernelwarmup.dev/kernelwarmup": "kw"}},
           "spec": {"template": {"metadata": {}, "spec": {"containers": [c]}}}}

    class Kube:
        def get_workload(self, kind, ns, name):
            gets.append(name)
            if len(gets) == 1:
                entered.set()
                release.wait(5)
            return None  # gone: nothing to write

    crs = [CRRecord("kw", "ns", uid="u", created="2026-01-01T00:00:00Z",
                    spec={"targets": {"names": ["llm"]}, "model": {"configPath": "/m/c.json"}})]
    ctl = Controller(Kube())
    holder = threading.Thread(target=ctl.reconcile_workload, args=(DEPLOYMENT, obj, crs))
    holder.start()
    assert entered.wait(5)
    t0 = time.monotonic()
    outs = [ctl.reconcile_workload(DEPLOYMENT, obj, crs, wait=False) for _ in range(20)]
    assert time.monotonic() - t0 < 1.0 and all(o.queued for o in outs)
    release.set()
    holder.join(5)
    assert gets == ["llm", "llm"]  # the burst of 20 cost one more read


def test_liveness_fails_while_a_reconcile_is_stuck(monkeypatch):
    import kopf

    from warmup_operator import config, handlers

    class Ctl:
        running = 301.0

        def stuck_for(self):
            return self.running

    ctl = Ctl()
    monkeypatch.setattr(handlers, "_controller", ctl)
    assert config.current().stuck_seconds == 300.0
    with pytest.raises(kopf.PermanentError, match="301s"):
        handlers.controller_progress()
    ctl.running = 2.0
    assert handlers.controller_progress() == {"longestReconcileSeconds": 2.0}


def test_a_failing_run_still_runs_the_nudge_left_meanwhile():
    """The review of issue 25: the holder's exception dropped the queued nudge (its event lost
    until the next resync)."""
    flight: SingleFlight[str, str] = SingleFlight()
    started, release, calls = threading.Event(), threading.Event(), []

    def work(arg: str) -> str:
        calls.append(arg)
        if arg == "first":
            started.set()
            release.wait(5)
            raise RuntimeError("api down")
        return arg

    errors = []
    t = threading.Thread(target=lambda: errors.append(_raised(lambda: flight.run("k", work, "first", wait=True))))
    t.start()
    assert started.wait(5)
    assert flight.run("k", work, "nudge", wait=False) is None
    release.set()
    t.join(5)
    assert calls == ["first", "nudge"] and errors == [None] and len(flight) == 0


def _raised(fn):
    try:
        fn()
    except RuntimeError as exc:
        return exc
    return None


def test_reruns_are_capped():
    from warmup_operator import singleflight

    flight: SingleFlight[int, int] = SingleFlight()
    runs = []

    def work(arg: int) -> int:
        runs.append(arg)
        assert flight.run("k", work, arg + 1, wait=False) is None  # every run is nudged again
        return arg

    assert flight.run("k", work, 0, wait=True) == singleflight.MAX_RUNS - 1
    assert len(runs) == singleflight.MAX_RUNS and len(flight) == 0
