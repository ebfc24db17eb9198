"""One run per key at a time, and no thread parked behind a run it need not wait for.

The controller reconciles a workload under its key. A caller that must see its own result
(a KernelWarmup's change, its deletion) waits for the key; a nudge (an event of the
workload or of one of its prewarm Jobs) does not: while a run of the key is in progress it
leaves its arguments for that run, which goes once more with the latest of them when it
ends. A burst of events then costs one extra run, not one parked handler thread each (the
executor's threads are shared by every namespace). Entries live only while their key is in
use, and the oldest run's age says whether the controller is stuck.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Hashable, Optional, TypeVar

# Runs of one key in a row at most (the first and the nudges' reruns): a workload nudged
# without pause cannot keep one handler thread for ever.
MAX_RUNS = 20
A = TypeVar("A")
R = TypeVar("R")


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0  # callers holding or waiting for the lock
    again: Optional[tuple[Any]] = None  # the latest arguments left by a nudge while it ran
    since: Optional[float] = None  # monotonic start of the run in progress


class SingleFlight(Generic[A, R]):
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._guard = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}
        self._clock = clock

    def run(self, key: Hashable, fn: Callable[[A], R], arg: A, *, wait: bool) -> Optional[R]:
        """``fn(arg)`` under ``key``; without ``wait``, None if a run of ``key`` was in
        progress (it runs ``fn`` again with ``arg`` before it ends)."""
        with self._guard:
            e = self._entries.setdefault(key, _Entry())
            if not wait and not e.lock.acquire(blocking=False):
                e.again = (arg,)
                return None
            e.users += 1
        if wait:
            e.lock.acquire()
        runs, error = 0, None
        while True:
            try:
                result, error = self._timed(e, fn, arg), None
            except Exception as exc:  # noqa: BLE001 - re-raised below; a nudge left meanwhile still runs first
                result, error = None, exc
            except BaseException:
                self._release(key, e)
                raise
            runs += 1
            again = self._next_or_release(key, e) if runs < MAX_RUNS else self._release(key, e)
            if again is None:
                if error is not None:
                    raise error
                return result
            arg = again[0]

    def _timed(self, e: _Entry, fn: Callable[[A], R], arg: A) -> R:
        e.since = self._clock()
        try:
            return fn(arg)
        finally:
            e.since = None

    def _next_or_release(self, key: Hashable, e: _Entry) -> Optional[tuple[Any]]:
        """The arguments a nudge left, or (none left) the key released, in one step: a nudge
        either finds the lock held and leaves its arguments, or gets the lock itself."""
        with self._guard:
            if e.again is not None:
                again, e.again = e.again, None
                return again
            self._drop(key, e)
        return None

    def _release(self, key: Hashable, e: _Entry) -> None:
        """Release the key, dropping a nudge's arguments (after MAX_RUNS: the next resync
        brings the workload back)."""
        with self._guard:
            e.again = None
            self._drop(key, e)

    def _drop(self, key: Hashable, e: _Entry) -> None:  # under the guard, the lock held
        e.lock.release()
        e.users -= 1
        if e.users == 0 and self._entries.get(key) is e:
            del self._entries[key]

    def oldest_run_s(self) -> float:
        """Seconds the longest run in progress has taken so far (0: none runs)."""
        now = self._clock()
        with self._guard:
            starts = [e.since for e in self._entries.values() if e.since is not None]
        return max((now - s for s in starts), default=0.0)

    def __len__(self) -> int:
        with self._guard:
            return len(self._entries)
