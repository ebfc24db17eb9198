"""Two (or more) GPUs, one run: rank-0 tune + broadcast (the warmer) vs every rank tuning
itself (what each vLLM worker does today). Wall time, GPU-seconds spent tuning, and whether
the ranks' tactic files are byte-identical. Logs to $OUT; a short table last.

    python bench/bench_autotune_broadcast.py [--max-tokens 1024] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fi_common import Log, card, dump, llama_arch, spec_for, table


@dataclass
class SelfTuneJob:
    """Baseline: every rank tunes the same planned ops into its own file."""

    ops: list
    out_dir: str
    tp: int

    def __call__(self, world, rdv, device):
        import torch.distributed as dist

        from kernel_warmer.flashinfer.tune import tune_ops
        from kernel_warmer.plan.flashinfer import AutoTuneOp

        path = Path(self.out_dir) / f"rank-{world.rank}.json"
        with rdv.guard("start"):
            dist.barrier()
        rep = tune_ops([AutoTuneOp(**o) for o in self.ops], path, tp=self.tp, quant="none", arch_moe=None,
                       device=device, log=lambda s: None)
        return {"rank": world.rank, "tune_s": rep.seconds,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def tactic_diff(files: list[Path]) -> int:
    """How many tactic entries differ between the ranks' files (metadata aside)."""
    docs = [json.loads(p.read_text()) for p in files]
    keys = set().union(*[set(d) for d in docs]) - {"_metadata", "_generation", "_records"}
    return sum(1 for k in keys if len({json.dumps(d.get(k)) for d in docs}) > 1)


def main() -> dict:
    import torch

    from kernel_warmer.cache.volume import CacheLayout
    from kernel_warmer.dist.workers import run_local_workers
    from kernel_warmer.flashinfer.phase import run_phase
    from kernel_warmer.plan.flashinfer import plan_every_op
    from kernel_warmer.spec import DistributedSection

    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = torch.cuda.device_count()
    if n < 2:
        raise SystemExit(f"needs >= 2 GPUs, found {n}")
    log = Log("bench_autotune_broadcast.log")
    arch = llama_arch()
    ops, _ = plan_every_op(arch, n, args.max_tokens, "none", None)

    # A: the warmer's way (rank 0 tunes, broadcast, local rank 0 writes, all verify)
    root = Path(tempfile.mkdtemp(prefix="kw-fi-bcast-"))
    t0 = time.monotonic()
    summary = run_phase(spec_for(args.max_tokens, n, str(root)), arch, CacheLayout(root), log)
    a_wall = time.monotonic() - t0
    log(f"A summary: {json.dumps(summary)}")
    assert summary.get("status") == "ok", summary
    a_identical = len({r["sha256"] for r in summary["ranks"]}) == 1 and all(r["loaded"] for r in summary["ranks"])

    # B: every rank tunes itself
    out = Path(tempfile.mkdtemp(prefix="kw-fi-self-"))
    t0 = time.monotonic()
    outcomes = run_local_workers(SelfTuneJob([o.to_dict() for o in ops], str(out), n), n,
                                 env={}, spec=DistributedSection(master_port=29561),
                                 timeout_s=600, total_timeout_s=3000, stale_after_s=60)
    b_wall = time.monotonic() - t0
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    b_res = [o.result for o in outcomes]
    log(f"B results: {json.dumps(b_res)}")
    files = sorted(out.glob("rank-*.json"))
    b_identical = len({r["sha256"] for r in b_res}) == 1
    differing = tactic_diff(files)

    result = {
        "card": card(), "gpus": n, "max_tokens": args.max_tokens, "ops": len(ops),
        "a_wall_s": a_wall, "a_tune_gpu_s": summary["tune_seconds"], "a_identical": a_identical,
        "b_wall_s": b_wall, "b_tune_gpu_s": sum(r["tune_s"] for r in b_res), "b_identical": b_identical,
        "b_differing_entries": differing, "wall_ratio_a_over_b": a_wall / b_wall,
    }
    result["gpu_s_ratio_a_over_b"] = result["a_tune_gpu_s"] / result["b_tune_gpu_s"]
    dump("bench_autotune_broadcast.json", result)
    print(table([
        ("card", f"{result['card']} x{n}"),
        ("model / M max", f"Llama-3-8B bf16 tp{n}, {len(ops)} GEMM shapes x 2 backends, M<={args.max_tokens}"),
        ("A rank-0 tune + broadcast", f"wall {a_wall:.1f} s, tuning GPU-s {result['a_tune_gpu_s']:.1f}, "
                                       f"files identical: {a_identical}"),
        ("B every rank tunes", f"wall {b_wall:.1f} s, tuning GPU-s {result['b_tune_gpu_s']:.1f}, "
                                f"files identical: {b_identical} ({differing} tactic entries differ)"),
        ("ratio A/B wall", f"{result['wall_ratio_a_over_b']:.2f}"),
        ("ratio A/B tuning GPU-s", f"{result['gpu_s_ratio_a_over_b']:.2f}"),
    ]))
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
