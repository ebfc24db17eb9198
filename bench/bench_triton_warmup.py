"""Triton warmup: N variants compiled by the parallel warmer vs the seed's one-by-one loop,
in the same run; compile-only on CPU vs on the GPU; `check` on a warm cache.

    PYTHONPATH=initcontainer python bench/bench_triton_warmup.py [--n 16]

Each mode starts from an empty cache and is timed end to end (a fresh `kernel-warmer run`
process, as the init container runs it). Logs and JSON go to $OUT (default ./out); the
short table is printed last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("OUT") or ROOT / "out")


def layers(n: int) -> list[dict]:
    """N distinct compiled variants: head size x GQA group x window x softcap."""
    combos = itertools.product((128, 64, 256), (4, 8, 2, 1), (None, 4096), (0.0, 50.0))
    out = []
    for head, group, window, cap in itertools.islice(combos, n):
        out.append({"numHeads": 8 * group, "numKvHeads": 8, "headSize": head, "slidingWindow": window,
                    "softcap": cap})
    return out


def run(args: list[str], log: Path) -> tuple[float, dict, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer"))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "kernel_warmer", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    log.write_text(" ".join(args) + "\n\n" + p.stderr + "\n" + p.stdout)
    try:
        summary = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
    except json.JSONDecodeError:
        summary = {}
    return wall, summary, p.returncode


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16, help="number of distinct variants")
    ap.add_argument("--target", default=None, help="compile-only arch (default: this GPU's, else sm_90)")
    ap.add_argument("--skip-gpu", action="store_true", help="CPU-only: compile-only rows and check")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    plan = work / "plan.json"
    plan.write_text(json.dumps({"layers": layers(a.n)}))
    gpu = not a.skip_gpu
    card = "cpu-only"
    target = a.target
    if gpu:
        import torch

        gpu = torch.cuda.is_available()
        if gpu:
            card = torch.cuda.get_device_name(0)
            major, minor = torch.cuda.get_device_capability(0)
            target = target or f"sm_{major * 10 + minor}"
    target = target or "sm_90"
    base = ["--plan", str(plan), "--no-flashinfer", "--provider", "builtin", "--termination-log", "/nonexistent/x"]
    rows: list[tuple[str, float, str]] = []
    results: dict = {"card": card, "n": a.n, "cpus": os.cpu_count(), "target": target}

    def mode(name: str, extra: list[str]) -> float:
        cache = work / name
        wall, s, rc = run(["run", "--cache-dir", str(cache), *base, *extra], OUT / f"bench-triton-{name}.log")
        t = s.get("triton", {})
        note = f"rc={rc} compiled={t.get('compiled')} hit={t.get('hit')} failed={t.get('failed')}"
        rows.append((name, wall, note))
        results[name] = {"wall_s": wall, "rc": rc, "triton": t}
        return wall

    if gpu:
        par = mode("gpu-parallel", [])
        seq = mode("gpu-sequential", ["--sequential"])
        results["ratio_sequential_over_parallel"] = seq / par
    co_par = mode("compile-only-parallel", ["--target", target])
    co_seq = mode("compile-only-sequential", ["--target", target, "--sequential"])
    results["ratio_compile_only_seq_over_par"] = co_seq / co_par
    if gpu:
        results["ratio_compile_only_over_gpu_parallel"] = co_par / results["gpu-parallel"]["wall_s"]

    # `check` on the warm compile-only cache: wall time of the whole process, and in-process
    env = dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer"))
    chk = ["check", "--cache-dir", str(work / "compile-only-parallel"), "--plan", str(plan), "--no-flashinfer",
           "--provider", "builtin", "--target", target]
    walls = []
    for _ in range(5):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "kernel_warmer", *chk], capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t)
    results["check"] = {"rc": p.returncode, "median_wall_s": statistics.median(walls), "stdout": p.stdout.strip()}
    rows.append(("check (warm, whole process)", statistics.median(walls), f"rc={p.returncode}"))
    (OUT / "bench_triton_warmup.json").write_text(json.dumps(results, indent=2))

    print(f"\nTriton warmup, {a.n} variants, card: {card}, {os.cpu_count()} CPUs, target {target}")
    print(f"{'mode':36s} {'wall s':>8s}  notes")
    for name, wall, note in rows:
        print(f"{name:36s} {wall:8.2f}  {note}")
    if gpu:
        print(f"ratio one-by-one / parallel (GPU):        {results['ratio_sequential_over_parallel']:.2f}x")
        print(f"ratio compile-only(CPU) / parallel (GPU):  {results['ratio_compile_only_over_gpu_parallel']:.2f}x")
    print(f"ratio compile-only one-by-one / parallel:  {results['ratio_compile_only_seq_over_par']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
