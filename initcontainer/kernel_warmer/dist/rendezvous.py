"""Rendezvous with liveness: names the rank that is missing or dead."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

from kernel_warmer.dist.world import WATCHDOG_EXIT, WorldError, WorldInfo

# how long close() waits for the heartbeat thread's store call (a dead host fails it at once)
CLOSE_JOIN_S = 5.0


class Rendezvous:
    """A TCPStore (hosted by rank 0) plus heartbeats, so failures name a rank.

    ``join`` waits for every rank's key and names the absent ones. A heartbeat thread
    bumps this rank's counter and watches everyone else's; ``guard`` arms a watchdog
    around a collective: if it does not finish in time, the ranks that never arrived or
    stopped beating are named and the process exits (a blocked NCCL/gloo call cannot be
    interrupted from Python). If the store itself is gone, its host, rank 0, died.
    """

    def __init__(self, world: WorldInfo, timeout_s: float, heartbeat_s: float = 1.0,
                 stale_after_s: float = 10.0, fail_file: Optional[Path] = None):
        from datetime import timedelta

        import torch.distributed as dist

        self.world = world
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.fail_file = fail_file
        self._stop = threading.Event()
        self._seen: dict[int, tuple[int, float]] = {}
        self._store_dead: Optional[str] = None
        self._lock = threading.Lock()
        try:
            self.store = dist.TCPStore(
                world.master_addr, world.master_port, world.world_size,
                is_master=world.rank == 0, timeout=timedelta(seconds=timeout_s),
                wait_for_workers=False,
            )
        except Exception as exc:
            if world.rank == 0:
                raise WorldError(f"rank 0 could not host the rendezvous on port {world.master_port}: {exc}") from exc
            raise WorldError(
                f"rank 0 (rendezvous host {world.master_addr}:{world.master_port}) never came up "
                f"within {timeout_s:.0f}s: {exc}", (0,)) from exc
        self._beat_thread = threading.Thread(target=self._beat, name="kw-heartbeat", daemon=True)

    # heartbeats ---------------------------------------------------------------------

    def _beat(self) -> None:
        keys = [f"hb/{r}" for r in range(self.world.world_size)]
        while not self._stop.is_set():
            try:
                self.store.add(f"hb/{self.world.rank}", 1)
                values = self.store.multi_get(keys) if self._all_beating() else [
                    self.store.get(k) if self.store.check([k]) else b"0" for k in keys]
                now = time.monotonic()
                with self._lock:
                    for r, v in enumerate(values):
                        count = int(v or b"0")
                        last = self._seen.get(r)
                        if last is None or last[0] != count:
                            self._seen[r] = (count, now)
            except Exception as exc:  # noqa: BLE001
                with self._lock:
                    self._store_dead = str(exc)
            self._stop.wait(self.heartbeat_s)

    def _all_beating(self) -> bool:
        with self._lock:
            return len(self._seen) == self.world.world_size and all(c > 0 for c, _ in self._seen.values())

    def stale_ranks(self) -> list[int]:
        now = time.monotonic()
        with self._lock:
            return sorted(r for r, (_, t) in self._seen.items()
                          if r != self.world.rank and now - t > self.stale_after_s)

    # joining ------------------------------------------------------------------------

    def join(self) -> None:
        """Every rank checks in; those absent after the timeout are named."""
        self.store.set(f"join/{self.world.rank}", socket.gethostname())
        self._beat_thread.start()
        deadline = time.monotonic() + self.timeout_s
        missing = list(range(self.world.world_size))
        while True:
            self.check_abort()
            missing = [r for r in missing if not self._check(f"join/{r}")]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise WorldError(
                    f"rank(s) {missing} never joined the world of {self.world.world_size} within "
                    f"{self.timeout_s:.0f}s (rendezvous {self.world.master_addr}:{self.world.master_port})",
                    tuple(missing))
            time.sleep(0.1)

    def abort(self, msg: str, ranks: tuple[int, ...], linger_s: Optional[float] = None) -> None:
        """Post why this rank gives up; rank 0 (the store's host) waits for the others to read it.

        A live rank reads it within one collective timeout (its guard checks for an abort,
        or its watchdog fires), so rank 0 keeps the store up that long for every rank that
        is still beating; leaving sooner turned the named culprit into "rank 0 is gone".
        """
        if linger_s is None:
            linger_s = self.timeout_s + 2 * self.heartbeat_s
        with contextlib.suppress(Exception):
            if not self.store.check(["abort/msg"]):
                self.store.set("abort/ranks", json.dumps(list(ranks)))
                self.store.set("abort/msg", msg)
            if self.world.rank == 0:
                waiting = [r for r in range(1, self.world.world_size) if r not in ranks]
                until = time.monotonic() + linger_s
                while time.monotonic() < until and not all(
                        self.store.check([f"abort-ack/{r}"]) for r in waiting):
                    if self.stale_ranks():
                        waiting = [r for r in waiting if r not in self.stale_ranks()]
                    time.sleep(0.05)

    def check_abort(self) -> None:
        """Raise the abort another rank posted, naming the culprits it named."""
        if self.world.world_size > 1 and self._check("abort/msg"):
            msg = self.get("abort/msg")
            ranks = tuple(json.loads(self.get("abort/ranks")))
            with contextlib.suppress(Exception):
                self.store.set(f"abort-ack/{self.world.rank}", "1")
            raise WorldError(msg, ranks)

    def _check(self, key: str) -> bool:
        try:
            return self.store.check([key])
        except Exception as exc:
            raise self._host_gone(exc) from exc

    def get(self, key: str) -> str:
        """A store read that names rank 0 when its host is gone (it holds the store)."""
        try:
            return self.store.get(key).decode()
        except Exception as exc:
            raise self._host_gone(exc) from exc

    def _host_gone(self, exc: BaseException) -> WorldError:
        return WorldError(f"rank 0 (rendezvous host {self.world.master_addr}:{self.world.master_port}) "
                          f"is gone: {type(exc).__name__}: {exc}", (0,))

    def wait_key(self, key: str, timeout_s: float, watch: tuple[int, ...]) -> str:
        """Wait for ``key`` while the ranks in ``watch`` keep beating."""
        deadline = time.monotonic() + timeout_s
        while not self._check(key):
            self.check_abort()
            dead = [r for r in self.stale_ranks() if r in watch]
            if dead:
                raise WorldError(f"rank(s) {dead} stopped responding (no heartbeat for "
                                 f"{self.stale_after_s:.0f}s) while rank {self.world.rank} waited for {key}",
                                 tuple(dead))
            if time.monotonic() > deadline:
                raise WorldError(f"rank {self.world.rank}: {key} not posted by rank(s) {list(watch)} "
                                 f"within {timeout_s:.0f}s", tuple(watch))
            time.sleep(0.1)
        return self.get(key)

    def wait_keys(self, keys: dict[int, str], timeout_s: float) -> dict[int, str]:
        """Wait for each rank's key while watching all of those ranks at once: the first
        that stops beating, or every rank still silent at the timeout, is named."""
        deadline = time.monotonic() + timeout_s
        got: dict[int, str] = {}
        while True:
            for r, key in keys.items():
                if r not in got and self._check(key):
                    got[r] = self.get(key)
            pending = sorted(set(keys) - set(got))
            if not pending:
                return got
            self.check_abort()
            dead = [r for r in self.stale_ranks() if r in pending]
            if dead:
                raise WorldError(f"rank(s) {dead} stopped responding (no heartbeat for {self.stale_after_s:.0f}s) "
                                 f"while rank {self.world.rank} waited for {keys[dead[0]]}", tuple(dead))
            if time.monotonic() > deadline:
                raise WorldError(f"rank {self.world.rank}: rank(s) {pending} posted nothing "
                                 f"({keys[pending[0]]}) within {timeout_s:.0f}s", tuple(pending))
            time.sleep(0.1)

    # collectives --------------------------------------------------------------------

    def diagnose(self, phase: str) -> tuple[str, tuple[int, ...]]:
        try:
            absent = [r for r in range(self.world.world_size)
                      if not self.store.check([f"arrive/{phase}/{r}"])]
        except Exception as exc:  # noqa: BLE001
            return f"rank 0 (rendezvous host) is gone ({exc})", (0,)
        stale = self.stale_ranks()
        if stale:
            return f"rank(s) {stale} stopped responding (dead?)", tuple(stale)
        if absent:
            return f"rank(s) {absent} never reached {phase}", tuple(absent)
        return "every rank arrived and is alive; the collective itself is stuck", ()

    @contextlib.contextmanager
    def guard(self, phase: str, timeout_s: Optional[float] = None) -> Iterator[None]:
        """Bound one collective: on timeout or peer failure, name the culprit rank(s)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        with contextlib.suppress(Exception):
            self.store.set(f"arrive/{phase}/{self.world.rank}", "1")

        def fire() -> None:
            try:
                self.check_abort()  # another rank already said who failed: report that
            except WorldError as posted:
                self._fail_hard(str(posted))
            why, ranks = self.diagnose(phase)
            msg = f"rank {self.world.rank}: {phase} did not finish within {timeout_s:.0f}s: {why}"
            self.abort(msg, ranks)
            self._fail_hard(msg)

        timer = threading.Timer(timeout_s, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except WorldError:
            raise
        except Exception as exc:  # a peer died mid-collective (gloo notices at once)
            timer.cancel()
            # A dead peer shows as a stalled heartbeat; give it the time to show.
            deadline = time.monotonic() + self.stale_after_s + 2 * self.heartbeat_s
            while not self.stale_ranks() and time.monotonic() < deadline:
                self.check_abort()
                time.sleep(self.heartbeat_s / 4)
            self.check_abort()
            why, ranks = self.diagnose(phase)
            raise WorldError(f"rank {self.world.rank}: {phase} failed: {why} ({type(exc).__name__}: {exc})",
                             ranks) from exc
        finally:
            timer.cancel()

    def _fail_hard(self, msg: str) -> None:
        print(f"kernel-warmer: {msg}", file=sys.stderr, flush=True)
        if self.fail_file is not None:
            with contextlib.suppress(OSError):
                self.fail_file.write_text(json.dumps({"ok": False, "error": msg}))
        os._exit(WATCHDOG_EXIT)

    def close(self) -> None:
        """Stop the heartbeat and wait for its thread. A daemon thread still inside a store
        call when the interpreter finalizes aborts the process (C++ ``terminate``, exit 134):
        seen when rank 0, the store's host, exited first and a peer's beat was failing."""
        self._stop.set()
        if self._beat_thread.is_alive() and self._beat_thread is not threading.current_thread():
            self._beat_thread.join(CLOSE_JOIN_S)
