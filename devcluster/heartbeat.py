"""Run a long command and say, while it runs, that it is still running.

Used by the slow first-run steps (the Go build of the control plane, the Python
dependency install, the image build): a line when the step starts, one at least every
``every_s`` seconds while it runs, and one with the elapsed time when it ends. Stdlib only
(it runs before any virtualenv exists).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

EVERY_S = 15.0


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: Sequence[str], what: str, *, cwd: Path | None = None, env: dict[str, str] | None = None,
        every_s: float = EVERY_S, say: Callable[[str], None] = _stderr) -> float:
    """Run ``cmd``; raise ``subprocess.CalledProcessError`` on a non-zero exit. Returns the
    elapsed seconds. Its output goes where ours goes (nothing is captured)."""
    say(f"{what} ...")
    start = time.monotonic()
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env)
    while True:
        try:
            rc = proc.wait(timeout=every_s)
            break
        except subprocess.TimeoutExpired:
            say(f"  still {what[0].lower()}{what[1:]}: {time.monotonic() - start:.0f}s so far")
    elapsed = time.monotonic() - start
    if rc != 0:
        say(f"{what}: failed (exit {rc}) after {elapsed:.1f}s")
        raise subprocess.CalledProcessError(rc, list(cmd))
    say(f"{what}: done in {elapsed:.1f}s")
    return elapsed
