"""A line every ``interval_s`` while a long phase runs (JIT build, tuning), so a silent
warmer is never mistaken for a hung one: ``heartbeat: <phase> <op> <elapsed>s [progress]``.

    with Heartbeat(log, "flashinfer jit") as beat:
        beat.update("fused_moe_90", progress=lambda: f"{count_objects()} object files")
        build()
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

INTERVAL_S = 15.0


class Heartbeat:
    def __init__(self, log: Callable[[str], None], phase: str, interval_s: float = INTERVAL_S):
        self.log, self.phase, self.interval_s = log, phase, interval_s
        self.op = ""
        self.progress: Optional[Callable[[], str]] = None
        self.started = time.monotonic()
        self._op_started = self.started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{phase}", daemon=True)

    def update(self, op: str, progress: Optional[Callable[[], str]] = None) -> None:
        """The op now running (and how to tell its progress, when known)."""
        self.op, self.progress, self._op_started = op, progress, time.monotonic()

    def line(self) -> str:
        now = time.monotonic()
        text = f"heartbeat: {self.phase} {self.op or '-'} {now - self._op_started:.0f}s " \
               f"(phase {now - self.started:.0f}s)"
        if self.progress is not None:
            try:
                text += f", {self.progress()}"
            except Exception as exc:  # noqa: BLE001 - progress is a nicety, never a failure
                text += f", progress unknown ({type(exc).__name__})"
        return text

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.log(self.line())

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
