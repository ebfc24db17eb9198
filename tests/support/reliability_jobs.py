"""Picklable jobs for test_dist_share_faults.py (spawned children import this)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from dist_jobs import ShareJob

import kernel_warmer.dist.share as distributed


@dataclass
class DieInBroadcastJob(ShareJob):
    """``die_in_broadcast_rank`` takes part in the size broadcast, then exits while the
    payload itself is being broadcast (mid-collective, not before it)."""

    die_in_broadcast_rank: Optional[int] = None

    def __call__(self, world, rdv, device):
        if world.rank == self.die_in_broadcast_rank:
            import torch
            import torch.distributed as dist

            def dying_broadcast(data, src, dev):
                size = torch.zeros(1, dtype=torch.int64)
                dist.broadcast(size, src)  # the header arrives ...
                os._exit(4)  # ... and the rank dies before the body

            distributed.broadcast_bytes = dying_broadcast
        return super().__call__(world, rdv, device)
