"""The facts that differ between the releases the warmer serves: one row per version range.

The warmer runs inside the serving image, so at run time it reads which vLLM, FlashInfer,
torch and Triton it runs with (package metadata, no import) and plans with the row of each
table that covers that version. A version no row covers is planned with the nearest row,
and the pick carries a Warning that names both (never silently).

Rows come from each release's own code (docs/VLLM.md cites the lines). Part of the
contract: stdlib only, so the operator can validate a serving command against every
release it knows.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from typing import Generic, Optional, Sequence, TypeVar

Version = tuple[int, int, int]


def parse_version(text: Optional[str]) -> Optional[Version]:
    """"0.7.2.post1" -> (0, 7, 2); "0.34.0+cu130" -> (0, 34, 0); None when unreadable."""
    if not text:
        return None
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def show(v: Version) -> str:
    return ".".join(map(str, v))


T = TypeVar("T")


@dataclass(frozen=True)
class Pick(Generic[T]):
    """The row used for a version, and the Warning when no row covers it."""

    facts: T
    version: Optional[str]  # as installed ("0.7.2.post1"); None: not installed
    warning: Optional[str] = None

    @property
    def exact(self) -> bool:
        return self.warning is None


def pick(rows: Sequence[T], version: Optional[str], what: str) -> Pick[T]:
    """The row whose [since, until) holds ``version``; else the nearest, with a Warning.
    Rows are ordered oldest first and each has ``since``/``until`` (Version) and ``label``."""
    v = parse_version(version)
    if v is None:
        newest = rows[-1]
        if version is None:
            return Pick(newest, None)  # not installed: nothing of it runs, nothing to warn about
        return Pick(newest, version, f"{what} version {version!r} is unreadable; "
                                     f"planned with the facts of {what} {newest.label}")
    for row in rows:
        if row.since <= v < row.until:
            return Pick(row, version)
    nearest = rows[0] if v < rows[0].since else rows[-1]
    known = f"{show(rows[0].since)} to {rows[-1].label}"
    return Pick(nearest, version, f"{what} {version} is not a release this warmer knows ({known}); "
                                  f"planned with the facts of {what} {nearest.label}")


def installed(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- FlashInfer -------------------------------------------------------------------------


@dataclass(frozen=True)
class MoeKeyFormat:
    """Where a fused-MoE tactic's file key holds its world: the positions, in
    ``MoERunner.get_cache_key_extras``, of the tp/ep sizes and (when the key has them) the
    tp/ep ranks, and how many extras the key has."""

    name: str
    length: int
    tp_size: int
    ep_size: int
    tp_rank: Optional[int] = None
    ep_rank: Optional[int] = None

    @property
    def per_rank(self) -> bool:
        """Each rank looks its tactics up under its own key (the warmer writes them all)."""
        return self.tp_rank is not None


# flashinfer/fused_moe/core.py MoERunner.get_cache_key_extras:
# 0.6.x-0.7.1: (x, w, out dtypes, top_k, tp_size, tp_rank, ep_size, ep_rank, cluster_size,
#   cluster_rank, ... 20 fields) (0.6.18: lines 715-736; 0.7.1: 778-799)
# 0.7.2 on: the ranks and cluster_rank are gone, "ranks that tune together must share
#   persisted entries" (0.7.2.post1: lines 758-780, 17 fields)
MOE_KEY_PER_RANK = MoeKeyFormat("per-rank keys (FlashInfer 0.6.0-0.7.1)", 20, tp_size=4, ep_size=6,
                                tp_rank=5, ep_rank=7)
MOE_KEY_SHARED = MoeKeyFormat("one key for every rank (FlashInfer 0.7.2+)", 17, tp_size=4, ep_size=5)


@dataclass(frozen=True)
class FlashInferFacts:
    label: str
    since: Version
    until: Version
    moe_key: MoeKeyFormat


FLASHINFER = (
    FlashInferFacts("0.6.0-0.7.1", (0, 6, 0), (0, 7, 2), MOE_KEY_PER_RANK),
    FlashInferFacts("0.7.2-0.7.x", (0, 7, 2), (0, 8, 0), MOE_KEY_SHARED),
)


def flashinfer(version: Optional[str]) -> Pick[FlashInferFacts]:
    return pick(FLASHINFER, version, "FlashInfer")


def installed_flashinfer() -> Pick[FlashInferFacts]:
    return flashinfer(installed("flashinfer-python"))
