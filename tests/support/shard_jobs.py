"""Picklable jobs for the sharded-tuning tests over gloo (spawned children import this).

The tuner is a real CPU function standing in for FlashInfer's profiling: for each item it
evaluates eight candidate "tactics" and keeps the cheapest, writing a FlashInfer-format
entry (the GEMM's or the fused MoE's key) into the rank's private file. Everything else
is the production code: the mode agreement, the split, the gather, the merge with every
rank's MoE keys, the broadcast, the writes and the sha256 checks."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from kernel_warmer.dist.share import Payload, share_payload
from kernel_warmer.flashinfer import tactics
from kernel_warmer.flashinfer.sharded import agree_mode, cover, share_sharded
from kernel_warmer.plan.flashinfer import MOE_OP, AutoTuneOp
from kernel_warmer.plan.shard import WorkItem, units, work_items
from kernel_warmer.versions import MOE_KEY_PER_RANK, MOE_KEY_SHARED, MoeKeyFormat

META = {"flashinfer_version": "0.6.18", "gpu": "CPU"}
BACKENDS = {"bf16_gemm": ("cudnn", "cublaslt")}


def plan(world: int, moe_only: bool = False) -> list[AutoTuneOp]:
    """Two GEMMs and the fused MoE (5 units), or the MoE alone (1 unit: cut into bucket
    ranges when the world has more ranks)."""
    moe = AutoTuneOp(MOE_OP, 768, 2048, 16, "experts", mode="bf16", tp_size=world, local_experts=128)
    if moe_only:
        return [moe]
    return [AutoTuneOp("bf16_gemm", 6144, 4096, 64, "qkv"), AutoTuneOp("bf16_gemm", 4096, 4096, 64, "o"), moe]


def moe_extras(op: AutoTuneOp, fmt: MoeKeyFormat) -> str:
    """MoERunner.get_cache_key_extras for bf16, top-k 8, tuned as (tp_rank 0, ep_rank 0):
    the 20 fields up to FlashInfer 0.7.1, the 17 from 0.7.2 (versions.py)."""
    head = "torch.bfloat16, torch.bfloat16, torch.bfloat16, 8"
    if fmt.per_rank:
        return (f"{head}, {op.tp_size}, 0, {op.ep_size}, 0, 1, 0, False, False, False, False, False, False, False, "
                "3, False, True")
    return f"{head}, {op.tp_size}, {op.ep_size}, 1, False, False, False, False, False, False, False, 3, False, True"


def entry_key(item: WorkItem, bucket: int, fmt: MoeKeyFormat = MOE_KEY_PER_RANK) -> str:
    op = item.op
    if op.op == MOE_OP:  # FlashInfer's fused-MoE key
        return f"('trtllm::fused_moe::gemm1', 'MoERunner', (({bucket}, {op.k}),), ({moe_extras(op, fmt)}))"
    runner = {"cudnn": "CudnnGemmRunner", "cublaslt": "CublasLtGemmRunner"}[item.variant]
    return str(("bf16_gemm", runner, ((bucket, op.k), (op.k, op.n)), ()))


def best_tactic(item: WorkItem, bucket: int) -> int:
    op = item.op
    return min(range(8), key=lambda c: ((op.n * 31 + op.k * 7 + bucket * 13 + c * c * 17) % 97, c))


@dataclass
class CpuTuner:
    """(items, file) -> (tuned, skipped, seconds), as tune.tune_items returns them."""

    rank: int
    die_after: Optional[int] = None  # exit after tuning this many items
    stall_s: float = 0.0
    fmt: MoeKeyFormat = MOE_KEY_PER_RANK

    def __call__(self, items: list[WorkItem], path: Path):
        t0 = time.monotonic()
        doc = json.loads(path.read_text()) if path.is_file() else {"_metadata": META}
        tuned = []
        for n, item in enumerate(items):
            if self.die_after is not None and n == self.die_after:
                os._exit(3)
            if n == 0:
                time.sleep(self.stall_s)  # alive (heartbeat beating) but stuck in its share
            for bucket in item.buckets:  # one call profiles every bucket of the item
                key = entry_key(item, bucket, self.fmt)
                runner = "MoERunner" if item.op.op == MOE_OP else key.split("'")[3]
                doc.setdefault(key, [runner, best_tactic(item, bucket)])
            tuned.append({**item.op.to_dict(), "buckets": list(item.buckets), "variant": item.variant,
                          "seconds": 0.001})
        path.write_text(json.dumps(tactics.ordered(doc), indent=2))
        return tuned, [], time.monotonic() - t0


@dataclass
class ShardedJob:
    root: str
    tuning: str = "sharded"
    gpus: dict = field(default_factory=dict)  # rank -> GPU model (default "CPU")
    die_rank: Optional[int] = None
    stall_rank: Optional[int] = None
    produce_timeout_s: float = 30.0
    use_cuda: bool = False
    moe_only: bool = False
    shared_moe_key: bool = False  # FlashInfer 0.7.2+'s key format (one key for every rank)

    def __call__(self, world, rdv, device):
        ops = plan(world.world_size, self.moe_only)
        items = work_items(ops, BACKENDS, world.world_size)
        mode, warning, gpus = agree_mode(world, rdv, self.tuning, self.gpus.get(world.rank, "CPU"), 20)
        fmt = MOE_KEY_SHARED if self.shared_moe_key else MOE_KEY_PER_RANK
        tuner = CpuTuner(world.rank, die_after=1 if world.rank == self.die_rank else None,
                         stall_s=12.0 if world.rank == self.stall_rank else 0.0, fmt=fmt)

        def dest_for(key: str) -> Path:  # one folder per node stands in for each node's volume
            return Path(self.root) / f"node{world.node_rank}" / key / "autotune.json"

        def loader(path: Path) -> bool:
            return tactics.has_moe_entries(json.loads(path.read_text()))

        common = dict(device=device, loader=loader, local_key=lambda: "env-test")
        if mode == "sharded":
            run = share_sharded(world, rdv, items, tuner, env_key="env-test", dest_for=dest_for,
                                finish=lambda doc, tuned: cover(doc, ops, tuned, world.world_size, fmt),
                                produce_timeout_s=self.produce_timeout_s, log=lambda s: None, **common)
            return {"mode": mode, "warning": warning, "gpus": gpus, "shares": run.shares,
                    "items": [it.label() for it in items], **run.result.to_dict()}

        def produce() -> Payload:
            with tempfile.TemporaryDirectory() as tmp:
                with_all = Path(tmp) / "autotune.json"
                tuned, _, _ = tuner(units(ops, BACKENDS), with_all)  # rank 0: every unit whole
                doc = cover(json.loads(with_all.read_text()), ops, tuned, world.world_size, fmt)
            return Payload(json.dumps(doc, indent=2).encode(), "env-test")

        res = share_payload(world, rdv, produce, dest_for, produce_timeout_s=self.produce_timeout_s, **common)
        return {"mode": mode, "warning": warning, "gpus": gpus, **res.to_dict()}
