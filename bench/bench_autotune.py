"""Cold FlashInfer tune (the warmer's real tuning path) vs a fresh serving process that loads
the warmed file through the sitecustomize. One GPU. Prints the ratio; logs go to $OUT.

The plan is the bench's own: every bf16 GEMM of Llama-3-8B on both Hopper backends (cuDNN,
cuBLASLt), the mechanism's stand-in; vLLM itself tunes no dense bf16 GEMM on Hopper, so the
warmer's plan (``plan_ops``) has nothing here and ``run_phase`` would skip.

    python bench/bench_autotune.py [--max-tokens 1024] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fi_common import ROOT, Log, card, dump, llama_arch, table


def probe(ops_json: str) -> None:
    """Fresh 'serving' process, as a server runs after start-up: no autotune context
    (inference mode), every planned op at every tuning bucket M <= m_max (powers of two,
    FlashInfer's default buckets), each backend. Every AutoTuner lookup is counted: a hit
    means the loaded file supplied the tactic; a miss means FlashInfer fell back."""
    import dataclasses

    import flashinfer.autotuner as fa
    import torch

    from kernel_warmer.flashinfer.tune import BF16_BACKENDS, _run_gemm
    from kernel_warmer.plan.flashinfer import AutoTuneOp

    ops = [AutoTuneOp(**o) for o in json.loads(ops_json)]
    dev = torch.device("cuda", 0)
    torch.ones(1, device=dev)  # CUDA up before timing, as in a server that loaded weights
    tuner = fa.AutoTuner.get()
    hits: list = []
    misses: list = []
    original = tuner.search_cache

    diagnostics: list = []

    def counting(custom_op, runners, input_shapes, tuning_config, inputs=None):
        result = original(custom_op, runners, input_shapes, tuning_config, inputs=inputs)
        key = [custom_op, runners[0].__class__.__name__, [list(s) for s in input_shapes][:2]]
        (hits if result[0] else misses).append(key)
        if not result[0]:  # what was looked up vs what the file holds for this runner
            r = runners[0]
            extras = r.get_cache_key_extras(inputs) if inputs is not None else ()
            looked_up = fa.AutoTuner._get_cache_key(custom_op, r, input_shapes, tuning_config, extras).file_key
            name = r.__class__.__name__
            stored = [k for k in tuner._file_configs if name in k and str(input_shapes[1][1]) in k]
            diagnostics.append({"looked_up": looked_up, "stored_same_runner_and_n": stored})
        return result

    # A server's start-up dummy run comes before real traffic. It matters here: FlashInfer
    # 0.6.18 keys tactics by the shape of its shared workspace buffer, which grows (32 MiB
    # -> 32 MiB + 256 B, seen on H200) at the first cuDNN GEMM of a process; lookups made
    # before that growth miss. One small unplanned GEMM stands in for that dummy run.
    import flashinfer

    flashinfer.mm_bf16(torch.randn(8, 256, device=dev, dtype=torch.bfloat16),
                       torch.randn(256, 256, device=dev, dtype=torch.bfloat16).t(), backend="cudnn")
    torch.cuda.synchronize()
    tuner.search_cache = counting
    start = time.monotonic()
    for op in ops:
        m = 1
        while m <= op.m_max:
            for b in BF16_BACKENDS:
                _run_gemm(dataclasses.replace(op, m_max=m), b, dev)
            m *= 2
    torch.cuda.synchronize()
    secs = time.monotonic() - start
    state = getattr(fa, "_kernel_warmup_state", {})
    (Path(os.environ.get("OUT") or "/tmp") / "autotune-misses.json").write_text(json.dumps(diagnostics, indent=1))
    print(json.dumps({"seconds": secs, "hits": len(hits), "misses": len(misses), "miss_examples": misses[:8],
                      "loaded": state.get("loaded"), "rejected": state.get("rejected"),
                      "file_configs": len(tuner._file_configs)}))


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--json", action="store_true", help="print the result as JSON last")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        probe(args.probe)
        return {}

    from kernel_warmer.dist.workers import run_local_workers
    from kernel_warmer.flashinfer.phase import AutotuneJob
    from kernel_warmer.plan.flashinfer import plan_every_op

    log = Log("bench_autotune.log")
    root = Path(tempfile.mkdtemp(prefix="kw-fi-bench-"))
    arch = llama_arch()
    ops, _ = plan_every_op(arch, 1, args.max_tokens, "none", None)
    job = AutotuneJob(ops=[o.to_dict() for o in ops], flashinfer_root=str(root / "flashinfer"), tp=1,
                      tuning="rank0")
    t0 = time.monotonic()
    (outcome,) = run_local_workers(job, 1, total_timeout_s=1500)
    cold_wall = time.monotonic() - t0
    assert outcome.ok, outcome.error
    summary = outcome.result
    log(f"cold result: {json.dumps(summary)[:4000]}")
    summary["env_key"] = Path(summary["path"]).parent.name

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "initcontainer" / "serving_site"), str(ROOT / "initcontainer"),
                                         env.get("PYTHONPATH", "")])
    env["KERNEL_WARMUP_FLASHINFER_DIR"] = str(root / "flashinfer")
    res = subprocess.run([sys.executable, __file__, "--probe", json.dumps([o.to_dict() for o in ops])],
                         env=env, capture_output=True, text=True, timeout=900)
    log(f"warm probe stderr tail:\n{res.stderr[-4000:]}")
    assert res.returncode == 0, res.stderr[-4000:]
    warm = json.loads(res.stdout.strip().splitlines()[-1])
    log(f"warm probe: {json.dumps(warm)}")

    cold = float(summary["tune_s"])
    result = {
        "card": card(), "max_tokens": args.max_tokens, "ops": len(ops),
        "cold_tune_s": cold, "cold_phase_wall_s": cold_wall, "warm_s": warm["seconds"],
        "warm_over_cold": warm["seconds"] / cold if cold else None,
        "lookups": warm["hits"] + warm["misses"], "hits": warm["hits"], "misses": warm["misses"],
        "miss_examples": warm["miss_examples"],
        "all_hits": warm["hits"] > 0 and warm["misses"] == 0, "loaded": warm["loaded"],
        "env_key": summary["env_key"], "file_sha256": summary["sha256"], "bytes": summary["size"],
    }
    dump("bench_autotune.json", result)
    print(table([
        ("card", result["card"]),
        ("model / M max", f"Llama-3-8B bf16 tp1, {len(ops)} GEMM shapes x 2 backends, M<={args.max_tokens}"),
        ("cold tune (rank 0, in warmer)", f"{cold:.2f} s  (whole phase {cold_wall:.2f} s)"),
        ("fresh process + sitecustomize", f"{warm['seconds']:.3f} s"),
        ("ratio warm/cold", f"{result['warm_over_cold']:.4f}  ({1 / result['warm_over_cold']:.0f}x faster)"),
        ("AutoTuner lookups (ops x buckets x backends)", f"{result['hits']} hits, {result['misses']} misses"),
        ("every shape a cache hit", str(result["all_hits"])),
    ]))
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
