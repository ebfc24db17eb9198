"""Atomic writes, checksums and the cross-process lock (stdlib only; part of the contract)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

from kernel_warmer.faults import fault_point

# atomic_write_bytes' temp files: ".<name>.<random>.tmp" next to the target.
TEMP_GLOB = ".*.tmp"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via temp file + fsync + rename in the target's own folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point("atomic-write")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class LockTimeout(TimeoutError):
    pass


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: Optional[float] = None, poll_s: float = 0.2) -> Iterator[float]:
    """Exclusive flock on ``path``; yields the seconds spent waiting.

    flock is released by the kernel when the holder dies (even by SIGKILL), so a crashed
    warmer never wedges the next one. Works across pods on hostPath and on most PVC
    filesystems (NFSv4 maps it to a lease).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    raise LockTimeout(f"cache lock {path} still held after {timeout_s:.0f}s") from None
                time.sleep(poll_s)
        yield time.monotonic() - start
    finally:
        os.close(fd)  # closing drops the flock
