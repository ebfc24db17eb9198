"""Picklable jobs for the multi-process torch.distributed tests (spawned children import this)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kernel_warmer.dist.share import Payload, share_payload

MAGIC = b"KWTEST"


@dataclass
class ShareJob:
    root: str
    size: int = 200_000
    tamper_rank: Optional[int] = None  # this rank reads back altered bytes
    die_rank: Optional[int] = None  # this rank exits right after joining
    use_cuda: bool = False

    def __call__(self, world, rdv, device):
        if world.rank == self.die_rank:
            os._exit(3)

        def produce() -> Payload:
            body = bytes((i * 7 + 3) % 251 for i in range(self.size))
            return Payload(MAGIC + body, "env-test")

        def dest_for(key: str) -> Path:  # one folder per node stands in for each node's volume
            return Path(self.root) / f"node{world.node_rank}" / key / "autotune.json"

        def read_back(path: Path) -> bytes:
            data = path.read_bytes()
            return data + b"x" if world.rank == self.tamper_rank else data

        res = share_payload(world, rdv, produce, dest_for, device=device, local_key=lambda: "env-test",
                            loader=lambda p: p.read_bytes().startswith(MAGIC), read_back=read_back,
                            produce_timeout_s=30)
        return res.to_dict()


@dataclass
class AbortAtExitJob:
    """Reports a result, then this rank's process dies of SIGABRT on its way out (as a
    daemon thread's C++ ``terminate`` did on a GPU host)."""

    abort_rank: int = 1
    use_cuda: bool = False

    def __call__(self, world, rdv, device):
        if world.rank == self.abort_rank:
            import atexit
            import signal

            atexit.register(os.kill, os.getpid(), signal.SIGABRT)
        return {"rank": world.rank}
