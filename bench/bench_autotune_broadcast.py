"""FlashInfer tuning over a world of GPUs, three ways in one run (issue 15):

  sharded  every rank tunes a share of the (op, shape, backend) items, each over all its M
           buckets in one call (a fused MoE cut into bucket ranges only when there are
           fewer items than ranks), rank 0 merges and broadcasts one file (the default)
  rank0    rank 0 tunes everything and broadcasts (the warmer before issue 15)
  every    every rank tunes everything into its own file (what each vLLM worker does)

for a world of 2 and of 4 GPUs: wall time, GPU-seconds, byte identity of the ranks' files,
hits in a fresh process per rank (one per GPU, in parallel, no autotune context), the ratio
sharded/rank0, the longest single item and the process start. Logs to $OUT; a table last.

GPU commands (repository root; the wheels installed in /tmp/site):

    export PYTHONPATH=/tmp/site:initcontainer NCCL_NVLS_ENABLE=0
    # the folder where FlashInfer's fused_moe_90 module was already built (a cold build
    # takes over 20 minutes); the bench and its probes use it as it is
    export FLASHINFER_WORKSPACE_BASE=/path/to/workspace
    # fused MoE: Qwen3-30B-A3B as `vllm serve Qwen/Qwen3-30B-A3B -tp <world> --moe-backend
    # flashinfer_cutlass --max-num-batched-tokens 64` (the engine-fidelity plan on Hopper)
    python3 bench/bench_autotune_broadcast.py --model moe --worlds 2,4            # 4 GPUs
    python3 bench/bench_autotune_broadcast.py --model moe --worlds 2              # 2 GPUs
    # stand-in: the bf16 dense GEMMs (plan_every_op, Llama-3-8B), to compare with the
    # earlier figures (docs/BENCHMARKS.md)
    python3 bench/bench_autotune_broadcast.py --model llama-bf16 --worlds 2,4 --max-tokens 64
    # no GPU, no FlashInfer: the plan, the items, their cost estimates, each rank's share
    python3 bench/bench_autotune_broadcast.py --model moe --worlds 2,4 --dry-run

Each mode runs in its own fresh processes, one per GPU, with an empty CUDA JIT cache, as a
warmer pod does (order: sharded, rank0, every); after an untimed warm-up (CUDA, the cuDNN
handle, the JIT module, one untuned call each), with an empty AutoTuner and no cached cuDNN
graphs, a barrier starts and ends the mode (wall = rank 0's time between them). So cuDNN's
once-per-process cost inside the first tuning call counts in every mode, as in a pod.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fi_common import ROOT, Log, dump, llama_arch, table

MODES = ("sharded", "rank0", "every")
QWEN_MOE = ROOT / "tests" / "fixtures" / "configs" / "qwen3-30b-a3b.json"


# --- the plan (CPU only) ------------------------------------------------------------------


def plan_for(model: str, world: int, max_tokens: int) -> tuple[list, dict, Any, str]:
    """(ops, backends by op, arch, label) for one world size."""
    from kernel_warmer.flashinfer.tune import BF16_BACKENDS, backends_by_op
    from kernel_warmer.plan.flashinfer import plan_every_op, plan_ops
    from kernel_warmer.plan.model import load_arch
    from kernel_warmer.spec import EngineSection

    if model == "moe":
        arch = load_arch(json.loads(QWEN_MOE.read_text()))
        ops, _ = plan_ops(arch, world, max_tokens, "auto", 90, EngineSection(moe_backend="flashinfer_cutlass"))
        label = (f"Qwen3-30B-A3B bf16 -tp {world} --moe-backend flashinfer_cutlass "
                 f"--max-num-batched-tokens {max_tokens} (plan_ops, SM90)")
        return ops, backends_by_op(), arch, label
    arch = llama_arch()
    ops, _ = plan_every_op(arch, world, max_tokens, "none", 90)
    return ops, backends_by_op(BF16_BACKENDS), arch, f"Llama-3-8B bf16 tp{world}, M <= {max_tokens} (plan_every_op)"


def describe(model: str, worlds: list[int], max_tokens: int) -> dict:
    from kernel_warmer.plan.shard import share_loads, split, work_items

    out = {}
    for w in worlds:
        ops, backends, _, label = plan_for(model, w, max_tokens)
        items = work_items(ops, backends, w)
        shares = split(items, w)
        out[w] = {"label": label, "ops": [o.to_dict() for o in ops],
                  "items": [{"label": it.label(), "cost": it.cost, "buckets": list(it.buckets)} for it in items],
                  "shares": [[it.label() for it in s] for s in shares], "loads": share_loads(shares),
                  "total_cost": round(sum(it.cost for it in items), 3)}
    return out


def print_dry_run(plan: dict) -> None:
    for w, p in plan.items():
        print(f"world {w}: {p['label']}")
        for o in p["ops"]:
            print(f"  op {json.dumps(o)}")
        print(f"  {len(p['items'])} item(s), estimated {p['total_cost']} s in all:")
        for it in p["items"]:
            print(f"    {it['label']}  est {it['cost']} s")
        ideal = max(p["loads"]) / p["total_cost"] if p["total_cost"] else 0.0
        print(f"  shares (estimated load per rank {p['loads']}; sharded/rank0 tuning time >= {ideal:.2f}):")
        for r, s in enumerate(p["shares"]):
            print(f"    rank {r}: {len(s)} item(s): {', '.join(s)}")


# --- the GPU run: one process per GPU, three modes in it -----------------------------------


def reset_tuner() -> None:
    """The timed mode starts as a fresh warmer process would: no tactics, and none of the
    cuDNN graphs the untimed warm-up built.

    FlashInfer keeps every built cuDNN graph (and its plan list) in a per-process lru_cache.
    Its own helper clears the graphs and the AutoTuner together
    (gemm_base.clear_cudnn_graph_cache, FlashInfer 0.6.18, marked internal, hence the
    fallback)."""
    from flashinfer.autotuner import AutoTuner

    try:
        from flashinfer.gemm.gemm_base import clear_cudnn_graph_cache
    except ImportError:
        print("bench: FlashInfer has no clear_cudnn_graph_cache; cuDNN graphs carry over between modes",
              file=sys.stderr)
    else:
        clear_cudnn_graph_cache()
    AutoTuner.get().clear_cache()


def warm_up(ops: list, backends: dict, arch: Any, device: Any) -> float:
    """Untimed: CUDA, cuDNN/cuBLASLt handles and the JIT module, one untuned call each."""
    import dataclasses

    import torch

    from kernel_warmer.flashinfer.tune import _run_gemm, _run_moe, settle_workspace
    from kernel_warmer.plan.flashinfer import MOE_OP

    t0 = time.monotonic()
    settle_workspace(device, lambda s: None)
    for op in ops:
        if op.op == MOE_OP:
            _run_moe(op, arch.moe, 0, 0, device, m=1)
        else:
            for b in backends.get(op.op, ()):
                _run_gemm(dataclasses.replace(op, m_max=1), b, device)
    torch.cuda.synchronize(device)
    return time.monotonic() - t0


@dataclass
class BenchJob:
    model: str
    max_tokens: int
    out_dir: str
    mode: str
    spawned_at: float  # time.time() when the parent spawned the workers

    def __call__(self, world, rdv, device):
        import torch.distributed as dist

        start_s = time.time() - self.spawned_at
        ops, backends, arch, _ = plan_for(self.model, world.world_size, self.max_tokens)
        warm_s = warm_up(ops, backends, arch, device)
        reset_tuner()
        with rdv.guard(f"{self.mode}/start"):
            dist.barrier()
        t0 = time.monotonic()
        res = self.run_mode(self.mode, ops, backends, arch, world, rdv, device)
        with rdv.guard(f"{self.mode}/end", 1800):
            dist.barrier()
        res["wall_s"] = round(time.monotonic() - t0, 3)
        print(f"rank {world.rank}: {self.mode} done in {res['wall_s']} s", flush=True)
        return {"rank": world.rank, "process_start_s": round(start_s, 3), "warm_up_s": round(warm_s, 3),
                "mode": self.mode, "result": res}

    def run_mode(self, mode, ops, backends, arch, world, rdv, device) -> dict:
        from kernel_warmer.files import sha256_file
        from kernel_warmer.flashinfer.phase import AutotuneJob
        from kernel_warmer.flashinfer.tune import BF16_BACKENDS, tune_ops

        folder = Path(self.out_dir) / f"w{world.world_size}" / mode
        if mode == "every":
            path = folder / f"rank-{world.rank}.json"
            rep = tune_ops(ops, path, tp=world.world_size, arch_moe=arch.moe, device=device,
                           log=lambda s: None, bf16_backends=backends.get("bf16_gemm", BF16_BACKENDS))
            return {"tune_s": round(rep.seconds, 3), "path": str(path), "sha256": sha256_file(path),
                    "tuned": len(rep.tuned), "longest": max(rep.tuned, key=lambda t: t["seconds"], default=None)}
        job = AutotuneJob(ops=[o.to_dict() for o in ops], flashinfer_root=str(folder), tp=world.world_size,
                          moe=arch.moe, produce_timeout_s=1800,
                          bf16_backends=backends.get("bf16_gemm", BF16_BACKENDS), tuning=mode, tag=f"{mode}/")
        res = job(world, rdv, device)
        longest = [s["longest"] for s in res.get("shares") or [] if s.get("longest")]
        if mode == "rank0" and res.get("tuned"):
            longest = [max(res["tuned"], key=lambda t: t["seconds"])]
        return {"tune_s": res.get("tune_s") or 0.0, "path": res["path"], "sha256": res["sha256"],
                "loaded": res["loaded"], "tuning": res["tuning"], "warnings": res["warnings"],
                "tuned": len(res.get("tuned") or []), "shares": res.get("shares"),
                "longest": max(longest, key=lambda t: t["seconds"], default=None)}


# --- fresh-process hits: one process per GPU, every file this rank would load ------------------


def probe(model: str, max_tokens: int, rank: int, checks: list[dict]) -> None:
    """A fresh process (no tuning, no autotune context), as a server after start-up: load
    each file, call every planned op at every bucket as rank ``rank``, count the lookups."""
    import dataclasses

    import flashinfer.autotuner as fa
    import torch

    from kernel_warmer.flashinfer.tune import _run_gemm, _run_moe, settle_workspace
    from kernel_warmer.plan.flashinfer import MOE_OP
    from kernel_warmer.plan.shard import hybrid_buckets

    dev = torch.device("cuda", 0)
    settle_workspace(dev, lambda s: None)  # a server's start-up dummy run grows the workspace first
    tuner = fa.AutoTuner.get()
    original = tuner.search_cache
    counts = {"hits": 0, "misses": 0}

    def counting(custom_op, runners, input_shapes, tuning_config, inputs=None):
        result = original(custom_op, runners, input_shapes, tuning_config, inputs=inputs)
        counts["hits" if result[0] else "misses"] += 1
        return result

    results = []
    for check in checks:
        tuner.clear_cache()
        loaded = bool(tuner.load_configs(check["path"]))
        ops, backends, arch, _ = plan_for(model, check["world"], max_tokens)
        counts.update(hits=0, misses=0)
        tuner.search_cache = counting
        for op in ops:
            for m in hybrid_buckets(op.m_max):
                if op.op == MOE_OP:
                    _run_moe(op, arch.moe, rank, 0, dev, m=m)
                else:
                    for b in backends.get(op.op, ()):
                        _run_gemm(dataclasses.replace(op, m_max=m), b, dev)
        torch.cuda.synchronize()
        tuner.search_cache = original
        results.append({**check, "rank": rank, "loaded": loaded, **counts})
    print(json.dumps(results))


def run_probes(model: str, max_tokens: int, per_rank: dict[int, list[dict]], log: Log) -> list[dict]:
    def one(rank: int) -> list[dict]:
        spec = Path(tempfile.mkdtemp(prefix="kw-probe-")) / "checks.json"
        spec.write_text(json.dumps(per_rank[rank]))
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible[rank] if rank < len(visible) else str(rank)}
        proc = subprocess.run([sys.executable, __file__, "probe", "--model", model, "--max-tokens", str(max_tokens),
                               "--rank", str(rank), "--checks", str(spec)], env=env, capture_output=True,
                              text=True, timeout=900)
        log(f"probe rank {rank}: rc={proc.returncode}\n{proc.stderr[-3000:]}")
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
        return json.loads(lines[-1]) if lines else [{**c, "rank": rank, "error": f"rc={proc.returncode}"}
                                                   for c in per_rank[rank]]

    with ThreadPoolExecutor(len(per_rank)) as pool:
        return [r for rs in pool.map(one, sorted(per_rank)) for r in rs]


# --- the run and the table ---------------------------------------------------------------------


@contextlib.contextmanager
def fresh_cuda_cache():
    """An empty CUDA driver JIT cache for the workers spawned inside (they inherit the
    environment), as in a new pod, so a mode cannot reuse kernels an earlier mode compiled."""
    before = os.environ.get("CUDA_CACHE_PATH")
    with tempfile.TemporaryDirectory(prefix="kw-cuda-cache-") as tmp:
        os.environ["CUDA_CACHE_PATH"] = tmp
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("CUDA_CACHE_PATH", None)
            else:
                os.environ["CUDA_CACHE_PATH"] = before


def run_world(model: str, world: int, max_tokens: int, out: Path, port: int, log: Log) -> list[dict]:
    """Each mode in its own fresh processes, one per GPU, as a warmer pod runs it: the
    once-per-process costs inside the first tuning call (cuDNN's) count in every mode."""
    from kernel_warmer.dist.workers import run_local_workers
    from kernel_warmer.spec import DistributedSection

    per_rank = [{"rank": r, "process_start_s": 0.0, "warm_up_s": 0.0, "modes": {}} for r in range(world)]
    for i, mode in enumerate(MODES):
        log(f"world {world}, {mode}: spawning {world} workers")
        with fresh_cuda_cache():
            outcomes = run_local_workers(BenchJob(model, max_tokens, str(out), mode, time.time()), world, env={},
                                         spec=DistributedSection(master_port=port + i), timeout_s=600,
                                         total_timeout_s=3000, stale_after_s=120)
        bad = [o for o in outcomes if not o.ok]
        if bad:
            raise SystemExit(f"world {world}, {mode} failed: {[(o.local_rank, o.error) for o in bad]}")
        for o in outcomes:
            r = per_rank[o.result["rank"]]
            r["process_start_s"] = max(r["process_start_s"], o.result["process_start_s"])
            r["warm_up_s"] = max(r["warm_up_s"], o.result["warm_up_s"])
            r["modes"][mode] = o.result["result"]
        log(f"world {world}, {mode} results: {json.dumps([o.result for o in outcomes])}")
    return per_rank


def summarize(world: int, results: list[dict], hits: list[dict]) -> dict:
    row: dict[str, Any] = {"world": world, "process_start_s": max(r["process_start_s"] for r in results),
                           "warm_up_s": max(r["warm_up_s"] for r in results)}
    for mode in MODES:
        per = [r["modes"][mode] for r in results]
        h = [x for x in hits if x["world"] == world and x["mode"] == mode]
        longest = max((p["longest"] for p in per if p.get("longest")), key=lambda t: t["seconds"], default=None)
        row[mode] = {
            "wall_s": results[0]["modes"][mode]["wall_s"],
            "tune_gpu_s": round(sum(p["tune_s"] for p in per), 3),
            "held_gpu_s": round(results[0]["modes"][mode]["wall_s"] * world, 3),
            "identical": len({p["sha256"] for p in per}) == 1,
            "hits": sum(x.get("hits", 0) for x in h), "misses": sum(x.get("misses", 0) for x in h),
            "all_loaded": all(x.get("loaded") for x in h) and len(h) == world,
            "longest_item": longest, "warnings": sorted({w for p in per for w in p.get("warnings") or []}),
            "tuning": per[0].get("tuning", mode),
        }
    row["ratio_sharded_over_rank0"] = round(row["sharded"]["wall_s"] / row["rank0"]["wall_s"], 3)
    row["ratio_sharded_over_every"] = round(row["sharded"]["wall_s"] / row["every"]["wall_s"], 3)
    return row


def m_range(tuned: dict) -> str:
    """'M<=64' for a call over all the op's buckets, 'M=1,2,4' for a bucket range."""
    from kernel_warmer.plan.shard import hybrid_buckets

    buckets = tuned.get("buckets")
    if not buckets or tuple(buckets) == hybrid_buckets(tuned["m_max"]):
        return f"M<={tuned['m_max']}"
    return "M=" + ",".join(map(str, buckets))


def table_rows(card: str, model: str, rows: list[dict]) -> list[tuple[str, str]]:
    out = [("card", card), ("model", model)]
    for row in rows:
        w = row["world"]
        out.append((f"world {w}: process start / warm-up", f"{row['process_start_s']:.1f} s / {row['warm_up_s']:.1f} s"))
        for mode in MODES:
            m = row[mode]
            lk = m["longest_item"]
            longest = f"{lk['seconds']:.1f} s ({lk['op']} {lk.get('variant', '')} {m_range(lk)})" if lk else "-"
            out.append((f"world {w}: {mode}", f"wall {m['wall_s']:.1f} s, tuning GPU-s {m['tune_gpu_s']:.1f}, "
                        f"held GPU-s {m['held_gpu_s']:.1f}, identical {m['identical']}, "
                        f"hits {m['hits']}/{m['hits'] + m['misses']}, longest item {longest}"))
        out.append((f"world {w}: sharded/rank0 wall", f"{row['ratio_sharded_over_rank0']:.2f} "
                    f"(sharded/every {row['ratio_sharded_over_every']:.2f})"))
    return out


def gpu_run(args: argparse.Namespace) -> dict:
    import torch

    n = torch.cuda.device_count()
    if n < max(args.worlds):
        raise SystemExit(f"needs {max(args.worlds)} GPUs, found {n}")
    log = Log("bench_autotune_broadcast.log")
    ws = os.environ.get("FLASHINFER_WORKSPACE_BASE")
    log(f"FLASHINFER_WORKSPACE_BASE={ws or '(unset: FlashInfer default; a cold fused_moe_90 build takes >20 min)'}")
    plan = describe(args.model, args.worlds, args.max_tokens)
    out = Path(tempfile.mkdtemp(prefix="kw-fi-shard-bench-"))
    t0 = time.monotonic()
    per_world = {w: run_world(args.model, w, args.max_tokens, out, 29561 + 10 * i, log)
                 for i, w in enumerate(args.worlds)}
    checks: dict[int, list[dict]] = {r: [] for r in range(max(args.worlds))}
    for w, results in per_world.items():
        for r in results:
            for mode in MODES:
                checks[r["rank"]].append({"world": w, "mode": mode, "path": r["modes"][mode]["path"]})
    hits = run_probes(args.model, args.max_tokens, checks, log)
    rows = [summarize(w, per_world[w], hits) for w in args.worlds]
    card = f"{torch.cuda.get_device_name(0)} x{n}"
    result = {"card": card, "model": args.model, "max_tokens": args.max_tokens, "plan": plan, "rows": rows,
              "hits": hits, "bench_s": round(time.monotonic() - t0, 1)}
    dump("bench_autotune_broadcast.json", result)
    print(table(table_rows(card, plan[args.worlds[0]]["label"], rows) + [("whole bench", f"{result['bench_s']} s")]))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", nargs="?", default="run", choices=["run", "probe"])
    ap.add_argument("--model", choices=["moe", "llama-bf16"], default="moe")
    ap.add_argument("--worlds", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4])
    ap.add_argument("--max-tokens", type=int, default=64, help="max_num_batched_tokens (keep <= 64 for ~4 min)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, items, costs and shares; no GPU")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--checks", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.cmd == "probe":
        probe(args.model, args.max_tokens, args.rank, json.loads(Path(args.checks).read_text()))
        return
    if args.dry_run:
        plan = describe(args.model, args.worlds, args.max_tokens)
        print(json.dumps(plan, indent=1) if args.json else "", end="\n" if args.json else "")
        if not args.json:
            print_dry_run(plan)
        return
    result = gpu_run(args)
    if args.json:
        print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
