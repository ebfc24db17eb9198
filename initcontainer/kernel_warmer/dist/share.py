"""One payload, made on rank 0, identical on every rank: rendezvous, broadcast, write, verify.

The warmer spawns one worker per visible GPU in its pod; pods of a multi-pod group
(LeaderWorkerSet, or explicit variables) join one torch.distributed world. Rank 0 runs a
*payload producer* (the FlashInfer tune, or anything in tests), the bytes are broadcast,
local rank 0 of each node writes them atomically, every rank loads them, and all ranks
compare a sha256 of what they read back. Any divergence fails on every rank, naming the
rank; so does a rank that never joins or dies, within a bounded time, never a hang.

Nothing here imports torch at module import time (the package is stdlib-only there)."""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from kernel_warmer.dist.rendezvous import Rendezvous
from kernel_warmer.dist.world import WorldError, WorldInfo
from kernel_warmer.files import atomic_write_bytes, sha256_bytes


@dataclass(frozen=True)
class Payload:
    data: bytes
    key: str  # names where it goes (the env key for FlashInfer)


@dataclass
class ShareResult:
    rank: int
    path: str
    sha256: str
    size: int
    wrote: bool
    loaded: Optional[bool]
    produce_s: float
    broadcast_s: float
    verify_s: float
    per_rank: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def broadcast_bytes(data: Optional[bytes], src: int, device: Any) -> bytes:
    import torch
    import torch.distributed as dist

    is_src = dist.get_rank() == src
    size = torch.tensor([len(data) if is_src and data is not None else 0], dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    n = int(size.item())
    if n == 0:
        return b""
    if is_src:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buf = torch.empty(n, dtype=torch.uint8, device=device)
    dist.broadcast(buf, src)
    return bytes(buf.cpu().untyped_storage())[:n]


def share_payload(
    world: WorldInfo,
    rdv: Rendezvous,
    producer: Callable[[], Payload],
    dest_for: Callable[[str], Path],
    *,
    device: Any,
    local_key: Optional[Callable[[], str]] = None,
    loader: Optional[Callable[[Path], bool]] = None,
    read_back: Callable[[Path], bytes] = lambda p: p.read_bytes(),
    produce_timeout_s: float = 1800.0,
    tag: str = "",
) -> ShareResult:
    """Rank 0 produces; all ranks receive, local rank 0 writes, all load and cross-check.
    ``tag`` prefixes every store key and phase, so one world can share several payloads."""
    import json

    import torch.distributed as dist

    t0 = time.monotonic()
    payload: Optional[Payload] = None
    if world.rank == 0:
        try:
            payload = producer()
        except Exception as exc:
            # a producer that gathers from other ranks (sharded tuning) names the culprits
            rdv.store.set(f"{tag}payload/ranks", json.dumps(list(getattr(exc, "ranks", ())) or [0]))
            rdv.store.set(f"{tag}payload/status", f"error: {type(exc).__name__}: {exc}")
            raise
        rdv.store.set(f"{tag}payload/key", payload.key)
        rdv.store.set(f"{tag}payload/status", "ok")
    else:
        status = rdv.wait_key(f"{tag}payload/status", produce_timeout_s, watch=(0,))
        if status != "ok":
            culprits = tuple(json.loads(rdv.get(f"{tag}payload/ranks")))
            raise WorldError(f"rank 0 failed to produce the payload: {status[len('error: '):]}", culprits)
    key = rdv.get(f"{tag}payload/key")
    t1 = time.monotonic()

    with rdv.guard(f"{tag}broadcast"):
        data = broadcast_bytes(payload.data if payload else None, 0, device)
    sha_received = sha256_bytes(data)
    t2 = time.monotonic()

    dest = dest_for(key)
    if world.local_rank == 0:
        atomic_write_bytes(dest, data)
    with rdv.guard(f"{tag}written"):
        dist.barrier()
    info: dict[str, Any] = {"rank": world.rank, "host": socket.gethostname(), "sha_received": sha_received,
                            "key": local_key() if local_key else key, "error": None}
    try:
        info["sha_file"] = sha256_bytes(read_back(dest))
        info["loaded"] = loader(dest) if loader else None
    except Exception as exc:  # noqa: BLE001 - reported by every rank below, naming this one
        info.update(sha_file=None, loaded=False, error=f"{type(exc).__name__}: {exc}")
    with rdv.guard(f"{tag}verify"):
        gathered: list[Any] = [None] * world.world_size
        dist.all_gather_object(gathered, info)
    t3 = time.monotonic()
    check_agreement(gathered, loader is not None)
    return ShareResult(rank=world.rank, path=str(dest), sha256=sha_received, size=len(data),
                       wrote=world.local_rank == 0, loaded=info["loaded"], produce_s=t1 - t0,
                       broadcast_s=t2 - t1, verify_s=t3 - t2, per_rank=gathered)


def check_agreement(gathered: list[dict[str, Any]], expect_loaded: bool) -> None:
    """Every rank read rank 0's exact bytes, under the same key, and loaded them (pure)."""
    ref = gathered[0]
    problems: list[str] = []
    culprits: list[int] = []
    for g in gathered:
        why = []
        if g.get("error"):
            why.append(f"could not read/load the file: {g['error']}")
        if g["sha_received"] != ref["sha_received"]:
            why.append(f"received sha256 {g['sha_received'][:12]} != rank 0's {ref['sha_received'][:12]}")
        if g.get("sha_file") is not None and g["sha_file"] != ref["sha_received"]:
            why.append(f"file on disk has sha256 {g['sha_file'][:12]} != rank 0's {ref['sha_received'][:12]}")
        if g["key"] != ref["key"]:
            why.append(f"environment key {g['key']} != rank 0's {ref['key']}")
        if expect_loaded and g.get("loaded") is False and not g.get("error"):
            why.append("load_configs returned False (FlashInfer rejected the file's environment)")
        if why:
            culprits.append(g["rank"])
            problems.append(f"rank {g['rank']} ({g.get('host', '?')}): " + "; ".join(why))
    if problems:
        raise WorldError("tactic cache disagreement: " + " | ".join(problems), tuple(culprits))
