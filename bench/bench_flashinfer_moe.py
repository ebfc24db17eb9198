"""FlashInfer fused MoE, cold vs warm, per rank: Qwen3-30B-A3B (bf16) served with
``vllm serve Qwen/Qwen3-30B-A3B -tp 2 --moe-backend flashinfer_cutlass --max-num-batched-tokens 64``.

The cold warmer run JIT-builds FlashInfer's fused-MoE module (over 12 minutes on a
16-32 core host) and tunes it, which is longer than one 10-minute command, so the work is
split in two phases that share an output folder:

    # 1. cold: one warmer run (JIT build + tuning), in the background; writes DIR/cold.json
    setsid nohup python bench/bench_flashinfer_moe.py cold --out DIR > DIR.cold.log 2>&1 &
    # 2. warm: per rank a fresh server-like process, then a second warmer run; DIR/warm.json
    python bench/bench_flashinfer_moe.py warm --out DIR [--json]

One GPU is enough: the warmer plans TP 2 from the serving command and tunes every rank's
MoE key on rank 0. The warm phase prints the per-rank ratio warm / cold, where cold is
what a server pays without the warmer (the JIT build plus tuning its own rank's key) and
warm is a fresh process's first fused-MoE calls at M = 1, 2, 4 .. 64 (module load
included) with the tactics loaded by the sitecustomize.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "initcontainer"))

from kernel_warmer.cache.volume import CacheLayout  # noqa: E402

CONFIG = ROOT / "tests" / "fixtures" / "configs" / "qwen3-30b-a3b.json"
SERVE = "vllm serve Qwen/Qwen3-30B-A3B -tp 2 --moe-backend flashinfer_cutlass --max-num-batched-tokens 64"
TP = 2
M_MAX = 64
MOE_OPS = ("trtllm::fused_moe::gemm1", "trtllm::fused_moe::gemm2")
# Processes that mean "a JIT build is running" (nvcc drives cicc and ptxas).
COMPILERS = ("nvcc", "cicc", "ptxas", "cudafe++")
# FlashInfer's own lock files and ninja's bookkeeping change on a no-op build, and FlashInfer's
# logger appends to flashinfer_jit.log whenever a process loads a module: none is a build.
JIT_IGNORED = (".lock", ".ninja_log", ".ninja_deps", "flashinfer_jit.log")


def layout(out: Path) -> CacheLayout:
    return CacheLayout(out / "cache")


def warmer_env(out: Path) -> dict[str, str]:
    """The env the operator gives the warmer and the server: the cache volume's JIT folder."""
    env = dict(os.environ)
    env["FLASHINFER_WORKSPACE_BASE"] = str(layout(out).flashinfer_jit_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "initcontainer"), env.get("PYTHONPATH")) if p)
    return env


def server_env(out: Path, rank: int) -> dict[str, str]:
    """A vLLM worker's env as the operator injects it, plus RANK/WORLD_SIZE (the
    sitecustomize reads a worker's rank from them when vLLM's own state is absent)."""
    env = warmer_env(out)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "initcontainer" / "serving_site"), env["PYTHONPATH"]])
    env["KERNEL_WARMUP_FLASHINFER_DIR"] = str(layout(out).flashinfer_root)
    env.update(RANK=str(rank), WORLD_SIZE=str(TP), LOCAL_RANK="0")
    return env


def warmer_argv(cmd: str, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "kernel_warmer", cmd, "--model-config", str(CONFIG), "--serve-command", SERVE,
            "--cache-dir", str(layout(out).root)]
    if cmd == "run" and os.environ.get("KW_FI_MOE_TUNING"):  # sharded (the warmer's default) | rank0
        argv += ["--tuning", os.environ["KW_FI_MOE_TUNING"]]
    # the fused-MoE JIT build alone can pass the default 30-minute deadline on 16 cores
    return argv + (["--termination-log", str(out / "termination-log"), "--timeout-seconds", "5400"]
                   if cmd == "run" else [])


def jit_files(out: Path) -> dict[str, tuple[int, int]]:
    """Every file FlashInfer's JIT wrote under the workspace -> (size, mtime_ns)."""
    root = layout(out).flashinfer_jit_dir
    found = {}
    for p in root.rglob("*") if root.is_dir() else []:
        if p.is_file() and not p.name.endswith(JIT_IGNORED):
            st = p.stat()
            found[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


def _parent(pid: str) -> Optional[str]:
    try:  # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses
        return (Path("/proc") / pid / "stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return None


class CompilerWatch:
    """Samples /proc every 0.1 s and records every compiler process that descends from this
    one (the probe it starts), so a build elsewhere on the machine is not counted."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._root = str(os.getpid())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _descends(self, pid: str) -> bool:
        for _ in range(64):
            pid = _parent(pid) or "0"
            if pid == self._root:
                return True
            if pid in ("0", "1"):
                return False
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            for d in Path("/proc").iterdir():
                try:
                    comm = (d / "comm").read_text().strip()
                except OSError:
                    continue
                if comm in COMPILERS and self._descends(d.name):
                    self.seen.add(f"{d.name}:{comm}")
            self._stop.wait(0.1)

    def __enter__(self) -> "CompilerWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# --- phase 1: the cold warmer run ----------------------------------------------------------


def cold(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold.json").unlink(missing_ok=True)
    before = jit_files(out)
    t0 = time.monotonic()
    with open(out / "cold-warmer.log", "w") as log:
        proc = subprocess.run(warmer_argv("run", out), env=warmer_env(out), stdout=subprocess.PIPE,
                              stderr=log, text=True)
    wall = time.monotonic() - t0
    summary = _last_json(proc.stdout)
    fi = (summary or {}).get("flashinfer") or {}
    jit = fi.get("jit") or {}
    result = {
        "rc": proc.returncode, "wall_s": round(wall, 3), "summary": summary,
        "jit_seconds": jit.get("seconds"), "jit_modules_built": jit.get("modules_built"),
        "tune_seconds": fi.get("tune_seconds"), "new_jit_files": len(set(jit_files(out)) - set(before)),
        # `check` hashes every manifest file: the libraries' size bounds how fast it can be
        "jit_library_bytes": {p: st[0] for p, st in jit_files(out).items() if p.endswith(".so")},
        "card": _card(),
    }
    (out / "cold.json").write_text(json.dumps(result, indent=2))
    print(f"cold warmer run: rc={proc.returncode} wall {wall:.1f}s, JIT {result['jit_seconds']}s "
          f"({result['jit_modules_built']}), tuning {result['tune_seconds']}s; log {out / 'cold-warmer.log'}")
    return result


def _last_json(text: str) -> Optional[dict]:
    for line in reversed((text or "").strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


def _card() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        return "torch not importable"


# --- phase 2: a fresh server-like process per rank, then a second warmer run ---------------


def probe(rank: int, out: Path) -> None:
    """Runs in a fresh process with the sitecustomize on PYTHONPATH and no autotune
    context, as a vLLM worker after start-up: flashinfer.cutlass_fused_moe called the way
    vLLM 0.33's FlashInferExperts.apply calls it for bf16
    (vllm/model_executor/layers/fused_moe/experts/flashinfer_cutlass_moe.py:365-389: no
    quant scales, no tune_max_num_tokens, this rank's tp_rank, a preallocated output,
    activation SiLU -> ActivationType.Swiglu) at M = 1, 2, 4 .. 64. Every AutoTuner lookup
    for the fused-MoE GEMMs is counted (hit: the loaded file supplied the tactic)."""
    import flashinfer
    import flashinfer.autotuner as fa
    import torch
    from flashinfer.fused_moe.core import ActivationType

    from kernel_warmer.plan.model import load_arch

    arch = load_arch(json.loads(CONFIG.read_text()))
    moe = arch.moe
    dev = torch.device("cuda", 0)
    torch.ones(1, device=dev)  # CUDA up first, as in a server that loaded its weights
    experts, hidden, inter = moe.num_experts, arch.hidden_size, moe.intermediate_size // TP
    w1 = torch.randn(experts, 2 * inter, hidden, device=dev, dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(experts, hidden, inter, device=dev, dtype=torch.bfloat16) * 0.02
    tuner = fa.AutoTuner.get()
    hits: list = []
    misses: list = []
    original = tuner.search_cache

    def counting(custom_op, runners, input_shapes, tuning_config, inputs=None):
        result = original(custom_op, runners, input_shapes, tuning_config, inputs=inputs)
        if custom_op in MOE_OPS:
            (hits if result[0] else misses).append([custom_op, [list(s) for s in input_shapes][:1]])
        return result

    tuner.search_cache = counting
    start = time.monotonic()
    first_call = None
    m = 1
    while m <= M_MAX:
        x = torch.randn(m, hidden, device=dev, dtype=torch.bfloat16)
        topk_ids = torch.randint(0, experts, (m, moe.experts_per_token), device=dev)
        topk_weights = torch.softmax(torch.randn(m, moe.experts_per_token, device=dev), dim=-1)
        output = torch.empty(m, hidden, device=dev, dtype=torch.bfloat16)
        flashinfer.cutlass_fused_moe(
            input=x, token_selected_experts=topk_ids.to(torch.int), token_final_scales=topk_weights,
            fc1_expert_weights=w1, fc2_expert_weights=w2, fc1_expert_biases=None, fc2_expert_biases=None,
            swiglu_alpha=None, swiglu_beta=None, swiglu_limit=None, output=output, output_dtype=torch.bfloat16,
            quant_scales=[], input_sf=None, tp_size=TP, tp_rank=rank, ep_size=1, ep_rank=0,
            activation_type=ActivationType.Swiglu, use_deepseek_fp8_block_scale=False,
            use_mxfp8_act_scaling=False, use_w4_group_scaling=False)
        torch.cuda.synchronize()
        if first_call is None:
            first_call = time.monotonic() - start
        m *= 2
    secs = time.monotonic() - start
    state = getattr(fa, "_kernel_warmup_state", {})
    print(json.dumps({"rank": rank, "seconds": round(secs, 4), "first_call_s": round(first_call or 0, 4),
                      "hits": len(hits), "misses": len(misses), "miss_examples": misses[:8],
                      "loaded": state.get("loaded"),
                      "rejected": {k: str(v) for k, v in (state.get("rejected") or {}).items()}}))


def run_probe(rank: int, out: Path) -> dict:
    before = jit_files(out)
    with CompilerWatch() as watch:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, __file__, "probe", "--out", str(out), "--rank", str(rank)],
                              env=server_env(out, rank), capture_output=True, text=True, timeout=900)
        wall = time.monotonic() - t0
    (out / f"probe-rank{rank}.log").write_text(proc.stderr)
    after = jit_files(out)
    res = _last_json(proc.stdout) or {}
    res.update(rc=proc.returncode, wall_s=round(wall, 3), compilers_seen=sorted(watch.seen),
               jit_new=sorted(set(after) - set(before)),
               jit_changed=sorted(p for p in set(after) & set(before) if after[p] != before[p]))
    if proc.returncode:
        res["stderr_tail"] = proc.stderr[-3000:]
    return res


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    return time.monotonic() - t0, proc


def warm(out: Path) -> dict:
    cold_doc = json.loads((out / "cold.json").read_text())
    ranks = [run_probe(r, out) for r in range(TP)]
    check_s, check = timed(warmer_argv("check", out), warmer_env(out))
    run_s, again = timed(warmer_argv("run", out), warmer_env(out))
    cold_s = (cold_doc.get("jit_seconds") or 0) + (cold_doc.get("tune_seconds") or 0)
    result = {
        "card": _card(), "cold": {k: cold_doc.get(k) for k in ("jit_seconds", "tune_seconds", "wall_s",
                                                                "jit_modules_built")},
        "ranks": ranks,
        # warm: the rank's FlashInfer work in a fresh process (module load + every M), not
        # its Python/torch start, which a server pays with or without the warmer
        "per_rank_warm_over_cold": {i: (r["seconds"] / cold_s if cold_s and r.get("seconds") else None)
                                    for i, r in enumerate(ranks)},
        "check": {"seconds": round(check_s, 3), "rc": check.returncode, "stdout": check.stdout.strip()[-500:]},
        "second_run": {"seconds": round(run_s, 3), "rc": again.returncode, "summary": _last_json(again.stdout)},
    }
    (out / "warm.json").write_text(json.dumps(result, indent=2))
    rows = [("card", result["card"]),
            ("cold (JIT + tune one rank)", f"{cold_doc.get('jit_seconds')} s JIT + {cold_doc.get('tune_seconds')} s tune")]
    for rank, r in enumerate(ranks):
        rows.append((f"rank {rank} warm start", f"{r.get('wall_s')} s process, {r.get('seconds')} s MoE calls, "
                     f"{r.get('hits')} hits / {r.get('misses')} misses, new JIT files {len(r['jit_new'])}, "
                     f"compilers {len(r['compilers_seen'])}"))
        ratio = result["per_rank_warm_over_cold"].get(rank)
        rows.append((f"rank {rank} warm/cold", f"{ratio:.4f}" if ratio else "n/a"))
    rows.append(("second warmer: check", f"{check_s:.3f} s rc={check.returncode}"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["cold", "warm", "probe"])
    ap.add_argument("--out", required=True, type=Path, help="folder shared by the two phases")
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print the result as JSON last")
    args = ap.parse_args()
    if args.phase == "probe":
        probe(args.rank, args.out)
        return
    result = cold(args.out) if args.phase == "cold" else warm(args.out)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
