"""Leader election on a coordination.k8s.io/v1 Lease: the pure rules (no I/O, no clock).

One replica holds the Lease and runs the controller handlers; the others wait. The rules
are client-go's (``tools/leaderelection``), written here for this operator:

- A holder renews every ``retry_s``. A replica that cannot renew for ``renew_deadline_s``
  stops acting at once (the process exits), which is before anyone else may take over.
- Another replica takes the Lease only after it has seen the *same* record unchanged for
  ``lease_s`` of its own (monotonic) time: clocks of different nodes are never compared.
- A holder that stops cleanly releases the Lease (empty holder, 1 s duration), so the next
  one takes over after one retry period instead of a whole lease duration.

Because ``renew_deadline_s < lease_s``, the old holder has stopped before a new one can
start: at most one replica writes at any time (barring a process frozen for longer than
``lease_s - renew_deadline_s`` between its deadline check and its write).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from typing import Any, Optional


@dataclass(frozen=True)
class Timing:
    """Seconds, as client-go names them (--leader-elect-lease-duration and friends)."""

    lease_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_s: float = 2.0

    def problem(self) -> Optional[str]:
        """Why these timings are unsafe, naming the flag to change (None: they are fine)."""
        if not (self.lease_s > 0 and self.renew_deadline_s > 0 and self.retry_s > 0):
            return "--leader-elect-lease-duration, --leader-elect-renew-deadline and --leader-elect-retry-period must be > 0"
        if self.renew_deadline_s >= self.lease_s:
            return (f"--leader-elect-renew-deadline ({self.renew_deadline_s:g}s) must be shorter than "
                    f"--leader-elect-lease-duration ({self.lease_s:g}s): a holder must stop before others may take over")
        if self.retry_s * 1.2 >= self.renew_deadline_s:
            return (f"--leader-elect-retry-period ({self.retry_s:g}s) must be well under --leader-elect-renew-deadline "
                    f"({self.renew_deadline_s:g}s) so a holder gets several tries to renew")
        return None


@dataclass(frozen=True)
class Record:
    """A Lease's spec, as this operator reads and writes it."""

    holder: str = ""
    lease_s: int = 0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: Optional[dict]) -> Optional["Record"]:
        if not lease:
            return None
        spec = lease.get("spec") or {}
        return cls(holder=str(spec.get("holderIdentity") or ""), lease_s=_int(spec.get("leaseDurationSeconds")),
                   acquire_time=str(spec.get("acquireTime") or ""), renew_time=str(spec.get("renewTime") or ""),
                   transitions=_int(spec.get("leaseTransitions")))

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"holderIdentity": self.holder, "leaseDurationSeconds": self.lease_s,
                                "leaseTransitions": self.transitions}
        if self.acquire_time:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time:
            spec["renewTime"] = self.renew_time
        return spec


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


@dataclass(frozen=True)
class Observed:
    """The last record this replica read, and when (its monotonic clock) it last changed."""

    record: Optional[Record]
    changed_at: float


def observe(previous: Optional[Observed], record: Optional[Record], now: float) -> Observed:
    """Remember ``record``; the clock restarts only when the record differs from the last one."""
    if previous is not None and previous.record == record:
        return previous
    return Observed(record, now)


def expired(seen: Observed, now: float) -> bool:
    """Whether the holder in ``seen`` has had its whole duration to renew and did not."""
    rec = seen.record
    if rec is None or not rec.holder:
        return True
    return now - seen.changed_at > max(rec.lease_s, 1)


def claim(current: Optional[Record], seen: Observed, me: str, now_mono: float, now_wall: str,
          timing: Timing) -> Optional[Record]:
    """The record to write to hold the Lease now: renew ours, or take a free or expired one;
    None while another holder's lease runs."""
    lease_s = max(int(round(timing.lease_s)), 1)
    if current is not None and current.holder == me:
        return replace(current, lease_s=lease_s, renew_time=now_wall)
    if current is not None and current.holder and not expired(seen, now_mono):
        return None
    transitions = current.transitions + 1 if current is not None else 0
    return Record(holder=me, lease_s=lease_s, acquire_time=now_wall, renew_time=now_wall, transitions=transitions)


def release(current: Record, me: str, now_wall: str) -> Optional[Record]:
    """The record that gives our Lease up (None: it is not ours to give)."""
    if current.holder != me:
        return None
    return replace(current, holder="", lease_s=1, renew_time=now_wall)


def micro_time(now: datetime.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
