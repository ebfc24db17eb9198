"""Sharded tuning over the world: every rank tunes its share, rank 0 merges, one file for all.

1. Every rank posts its GPU model; ranks on different models fall back to rank-0 tuning
   (a tactic timed on one model need not suit another): ``agree_mode``.
2. Every rank computes the same split (plan/shard.py), tunes its share into a private
   file seeded from the warm file, and posts the bytes and a report to the store.
3. Rank 0 tunes its own share, then gathers the others' (a rank that dies is named once its
   heartbeat stops, a stalled one when the produce timeout runs out), merges them
   (tactics.merge: the bytes do not depend on who tuned what), writes every rank's fused-MoE
   keys (``cover``), and hands the bytes to ``share_payload``: broadcast, write, load, sha256
   on every rank, as in rank-0 mode. Nothing is written where the tactics go until every
   share has arrived, so a failure leaves no complete-looking file.

Nothing here imports torch or FlashInfer; the tuner is passed in (``TuneShare``).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from kernel_warmer.dist.rendezvous import Rendezvous
from kernel_warmer.dist.share import Payload, ShareResult, share_payload
from kernel_warmer.dist.world import WorldError, WorldInfo
from kernel_warmer.flashinfer import tactics
from kernel_warmer.plan.flashinfer import AutoTuneOp
from kernel_warmer.flashinfer.tune import TUNE_FILE, cover_ranks
from kernel_warmer.plan.shard import WorkItem, choose_mode, share_loads, split
from kernel_warmer.versions import MoeKeyFormat


@dataclass
class ShardReport:
    """What one rank did with its share (JSON through the store)."""

    rank: int
    items: int
    cost: float
    seconds: float
    tuned: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def longest(self) -> Optional[dict[str, Any]]:
        return max(self.tuned, key=lambda t: t.get("seconds", 0.0), default=None)


# (items, private file) -> (tuned, skipped, seconds): the rank's tuner writes the file
TuneShare = Callable[[list[WorkItem], Path], tuple[list[dict[str, Any]], list[dict[str, Any]], float]]


def agree_mode(world: WorldInfo, rdv: Rendezvous, requested: str, gpu: str, timeout_s: float,
               tag: str = "") -> tuple[str, Optional[str], list[str]]:
    """(mode, warning, each rank's GPU): every rank posts its GPU model and decides alike."""
    if world.world_size == 1:
        return requested, None, [gpu]
    rdv.store.set(f"{tag}gpu/{world.rank}", gpu)
    got = rdv.wait_keys({r: f"{tag}gpu/{r}" for r in range(world.world_size)}, timeout_s)
    gpus = [got[r] for r in range(world.world_size)]
    mode, warning = choose_mode(requested, gpus)
    return mode, warning, gpus


def cover(doc: dict[str, Any], ops: list[AutoTuneOp], tuned: list[dict[str, Any]], tp: int,
          fmt: Optional[MoeKeyFormat] = None) -> dict[str, Any]:
    """The merged file with every rank's fused-MoE keys and the covered world (tune.cover_ranks)."""
    with tempfile.TemporaryDirectory(prefix="kw-fi-merge-") as tmp:
        path = Path(tmp) / TUNE_FILE
        path.write_text(json.dumps(doc, indent=2))
        cover_ranks(path, ops, tuned, tp, fmt)
        return json.loads(path.read_text())


def _tune_share(rank: int, mine: list[WorkItem], tune_share: TuneShare, seed: Optional[Path]) -> tuple[bytes, ShardReport]:
    with tempfile.TemporaryDirectory(prefix="kw-fi-share-") as tmp:
        path = Path(tmp) / TUNE_FILE
        if seed is not None and seed.is_file():  # start warm: covered items are cache hits
            path.write_bytes(seed.read_bytes())
        tuned, skipped, secs = tune_share(mine, path)
        data = path.read_bytes() if path.is_file() else b""
    report = ShardReport(rank, len(mine), round(sum(i.cost for i in mine), 3), round(secs, 3), tuned, skipped)
    return data, report


def _post(rdv: Rendezvous, tag: str, rank: int, data: bytes, report: ShardReport) -> None:
    rdv.store.set(f"{tag}shard/{rank}/data", data)
    rdv.store.set(f"{tag}shard/{rank}/report", json.dumps(asdict(report)))
    rdv.store.set(f"{tag}shard/{rank}/status", "ok")


def _gather(world: WorldInfo, rdv: Rendezvous, tag: str, timeout_s: float) -> list[tuple[bytes, ShardReport]]:
    """Rank 0: every other rank's shard, naming the rank that failed, died or stalled."""
    others = {r: f"{tag}shard/{r}/status" for r in range(1, world.world_size)}
    statuses = rdv.wait_keys(others, timeout_s)
    failed = {r: s for r, s in statuses.items() if s != "ok"}
    if failed:
        why = "; ".join(f"rank {r}: {s[len('error: '):]}" for r, s in sorted(failed.items()))
        raise WorldError(f"rank(s) {sorted(failed)} failed while tuning their share: {why}", tuple(sorted(failed)))
    out = []
    for r in sorted(others):
        data = rdv.store.get(f"{tag}shard/{r}/data")
        report = ShardReport(**json.loads(rdv.get(f"{tag}shard/{r}/report")))
        out.append((bytes(data), report))
    return out


def merge_shards(shards: list[tuple[bytes, ShardReport]], finish: Callable[[dict[str, Any], list[dict[str, Any]]], dict[str, Any]]
                 ) -> tuple[bytes, list[ShardReport]]:
    """Rank order in, one file's bytes out (FlashInfer's layout: indent 2)."""
    docs = [json.loads(d) if d else {} for d, _ in shards]
    reports = [r for _, r in shards]
    doc = tactics.merge(docs, [r.rank for r in reports])
    if not any(not k.startswith("_") for k in doc):
        raise RuntimeError("FlashInfer saved no tactics on any rank (every planned item was skipped)")
    doc = finish(doc, [t for r in reports for t in r.tuned])
    return json.dumps(doc, indent=2).encode(), reports


@dataclass
class ShardedRun:
    result: ShareResult
    shares: list[dict[str, Any]]  # rank 0: every rank's; others: their own
    tuned: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    tune_s: float


def share_sharded(world: WorldInfo, rdv: Rendezvous, items: list[WorkItem], tune_share: TuneShare, *,
                  env_key: str, dest_for: Callable[[str], Path], device: Any,
                  finish: Callable[[dict[str, Any], list[dict[str, Any]]], dict[str, Any]],
                  seed: Optional[Path] = None, loader: Optional[Callable[[Path], bool]] = None,
                  local_key: Optional[Callable[[], str]] = None, produce_timeout_s: float = 1800.0,
                  tag: str = "", log: Callable[[str], None] = print) -> ShardedRun:
    """Tune this rank's share; rank 0 merges every share into the payload ``share_payload``
    broadcasts and verifies. Raises WorldError naming the rank whose share failed."""
    shares = split(items, world.world_size)
    mine = shares[world.rank]
    log(f"flashinfer: rank {world.rank} tunes {len(mine)} of {len(items)} item(s) "
        f"(estimated loads per rank {share_loads(shares)})")
    reports: list[ShardReport] = []
    t0 = time.monotonic()
    own: Optional[tuple[bytes, ShardReport]] = None
    try:
        own = _tune_share(world.rank, mine, tune_share, seed)
    except Exception as exc:
        if world.rank != 0:
            rdv.store.set(f"{tag}shard/{world.rank}/status", f"error: {type(exc).__name__}: {exc}")
        raise
    tune_s = time.monotonic() - t0
    if world.rank != 0:
        _post(rdv, tag, world.rank, *own)
        reports = [own[1]]

    def produce() -> Payload:
        data, got = merge_shards([own] + _gather(world, rdv, tag, produce_timeout_s), finish)
        reports.extend(got)
        return Payload(data, env_key)

    # the others wait for rank 0's gather plus one collective timeout, so that rank 0, not
    # they, names a rank that stalls in its share
    res = share_payload(world, rdv, produce, dest_for, device=device, local_key=local_key, loader=loader,
                        produce_timeout_s=produce_timeout_s + rdv.timeout_s, tag=tag)
    rows = [{"rank": r.rank, "items": r.items, "cost": r.cost, "seconds": r.seconds,
             "tuned": len(r.tuned), "skipped": len(r.skipped), "longest": r.longest()} for r in reports]
    return ShardedRun(res, rows, [t for r in reports for t in r.tuned], [s for r in reports for s in r.skipped],
                      round(tune_s, 3))
