"""Leader election on a coordination.k8s.io/v1 Lease (the rules are in core/lease.py).

``Elector.run`` tries to acquire or renew the Lease every retry period. When it starts
holding it, ``on_started`` runs (replica.py starts the controller handlers); a watchdog
thread calls ``on_lost`` as soon as the holder has gone ``renew_deadline`` without a
successful renewal (replica.py then exits the process, before another replica may take
over). ``release`` gives the Lease up on a clean stop.

Why a Lease and not kopf's peering: peering pauses kopf's watch streams as a whole, so a
standby replica's indexes go stale and its admission handlers would answer from them; it
needs two extra CRDs and distinct priorities per replica, and a dead leader is noticed
only after the peering lifetime (60 s by default). A Lease is built into Kubernetes, its
expiry is local to each watcher, and every replica keeps its own webhook and indexes.
"""

from __future__ import annotations

import datetime
import logging
import socket
import threading
import time
import uuid
from typing import Any, Callable, Optional

from warmup_operator import metrics
from warmup_operator.kube import _brief
from warmup_operator.core.lease import Observed, Record, Timing, claim, micro_time, observe, release

log = logging.getLogger("warmup_operator.leader")


def identity(name: str = "") -> str:
    """This replica's holder identity: the Pod's name (or host name) and a random suffix, so
    a restarted container never mistakes the previous process's Lease for its own."""
    return f"{name or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class Elector:
    def __init__(self, api: Any, namespace: str, name: str, me: str, timing: Timing, *,
                 on_started: Callable[[], None], on_lost: Callable[[], None],
                 mono: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc)):
        self.api, self.namespace, self.name, self.me, self.timing = api, namespace, name, me, timing
        self.on_started, self.on_lost = on_started, on_lost
        self._mono, self._wall = mono, wall
        self._seen: Optional[Observed] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.leading = False
        self.last_renew = 0.0  # monotonic start of the last successful write
        self._lost = False

    # --- one try ---------------------------------------------------------------------

    def try_once(self) -> bool:
        """Acquire or renew once; whether we hold the Lease after it (errors: False)."""
        started = self._mono()
        try:
            lease = self.api.get_lease(self.namespace, self.name)
            current = Record.from_lease(lease)
            self._seen = observe(self._seen, current, started)
            want = claim(current, self._seen, self.me, started, micro_time(self._wall()), self.timing)
            if want is None:
                return False
            version = (lease.get("metadata") or {}).get("resourceVersion") if lease else None
            if not self.api.write_lease(self.namespace, self.name, want.to_spec(), version):
                return False
        except Exception as exc:  # noqa: BLE001 - the API may be away; the loop retries
            log.warning("leader election: %s/%s: %s", self.namespace, self.name, _brief(exc))
            return False
        with self._lock:
            self.last_renew = started
        return True

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Until ``stop()``: acquire, then renew; ``on_started`` once when we start holding."""
        threading.Thread(target=self._watchdog, name="lease-watchdog", daemon=True).start()
        log.info("leader election: %s waits for Lease %s/%s", self.me, self.namespace, self.name)
        while not self._stop.is_set() and not self._lost:
            held = self.try_once()
            if held and not self.leading:
                self.leading = True
                metrics.LEADER.set(1)
                metrics.LEADER_ACQUISITIONS.inc()
                log.info("leader election: %s now holds Lease %s/%s", self.me, self.namespace, self.name)
                self.on_started()
            self._stop.wait(self.timing.retry_s)

    def _watchdog(self) -> None:
        """Call ``on_lost`` once the holder has gone renew_deadline without renewing."""
        tick = min(0.5, self.timing.retry_s / 2)
        while not self._stop.wait(tick):
            with self._lock:
                late = self.leading and self._mono() - self.last_renew >= self.timing.renew_deadline_s
            if late:
                self._lost = True
                self.leading = False
                metrics.LEADER.set(0)
                log.error("leader election: %s could not renew Lease %s/%s for %.0fs: stopping", self.me,
                          self.namespace, self.name, self.timing.renew_deadline_s)
                self.on_lost()
                return

    def stop(self) -> None:
        self._stop.set()

    def release(self) -> bool:
        """Give the Lease up (call after the controller handlers stopped); whether it was ours."""
        self.stop()
        was_leading, self.leading = self.leading, False
        metrics.LEADER.set(0)
        if not was_leading:
            return False
        try:
            lease = self.api.get_lease(self.namespace, self.name)
            current = Record.from_lease(lease)
            out = release(current, self.me, micro_time(self._wall())) if current else None
            if out is None or lease is None:
                return False
            done = self.api.write_lease(self.namespace, self.name, out.to_spec(),
                                        (lease.get("metadata") or {}).get("resourceVersion"))
        except Exception as exc:  # noqa: BLE001 - then the others wait for it to expire
            log.warning("leader election: releasing %s/%s: %s", self.namespace, self.name, _brief(exc))
            return False
        if done:
            log.info("leader election: %s released Lease %s/%s", self.me, self.namespace, self.name)
        return done
