"""One clock for the whole warmup: ``timeoutSeconds`` bounds every phase (stdlib only).

Each phase has its own bounded waits (the cache lock, the distributed rendezvous), but a
hang that is nobody's wait — ``open()`` on a FIFO where config.json should be, a ``ptxas``
that never returns, a compile worker stuck in a driver call — would otherwise hold the
pod's init phase forever. A watchdog thread, started when ``run`` starts, ends the warmup
when the time is up: it kills every process the warmer started (their whole tree, found in
/proc), reports the timeout as the summary and exits the process with the failure
policy's code (``Ignore``: 0, so the server starts cold). The blocked main thread is
never waited for: a FIFO ``open()`` does not return to be interrupted.

Nothing half-written is recorded as warm: the manifest is written last and atomically,
the cache lock is an flock the kernel drops with the process, and the next run sweeps the
temp files.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Optional


def children_of(pid: int, proc: Path = Path("/proc")) -> dict[int, list[int]]:
    """ppid -> [pid] for every process visible in /proc (Linux)."""
    tree: dict[int, list[int]] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat_line = (d / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(d.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree = children_of(pid)
    out, todo = [], list(tree.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def kill_tree(pid: Optional[int] = None, rounds: int = 5) -> int:
    """SIGKILL every descendant of ``pid`` (default: this process); a few rounds, for a
    child that forked meanwhile. Returns how many were signalled."""
    pid = os.getpid() if pid is None else pid
    killed = 0
    for _ in range(rounds):
        found = descendants(pid)
        if not found:
            break
        for p in found:
            try:
                os.kill(p, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)
    return killed


class Watchdog:
    """Calls ``on_expiry(elapsed_s)`` once after ``seconds`` unless cancelled first;
    ``on_expiry`` is expected to end the process (``os._exit``)."""

    def __init__(self, seconds: float, on_expiry: Callable[[float], None]):
        self.seconds = seconds
        self._on_expiry = on_expiry
        self._start = time.monotonic()
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._wait, name="kernel-warmer-deadline", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancelled.set()

    def _wait(self) -> None:
        if self._cancelled.wait(self.seconds):
            return
        self._on_expiry(time.monotonic() - self._start)
