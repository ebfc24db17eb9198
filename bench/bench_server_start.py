"""A real ``vllm serve`` start, cold vs after the warmer's engine phase, side by side (issue 26).

For each model shape (dummy weights for the server too: the weights are not what is
measured), in one run on one GPU:

1. **cold**: the server on an empty cache volume (what every replica pays today on an
   emptyDir, and the first replica set on any volume);
2. **warmer**: ``kernel-warmer run`` with the serving command, on a second empty volume
   (its planned Triton/FlashInfer work, then its engine phase);
3. **warmed**: the server on that volume: time to ``/health``, vLLM's phase times, Triton
   compiles in every server process (a listener, bench/compile_listener/), compiler
   processes (nvcc, cicc, ptxas), files written to the volume, vLLM's "loaded from cache" lines;
4. **replica**: a second server on the same volume (what a rollout sees);
5. ``kernel-warmer check`` after both (warm? how long?).

The server is always ``python -m vllm.entrypoints.cli.main serve MODEL <args>`` with the same
env (HOME, VLLM_*, PATH, CUDA_HOME are in vLLM's compile key), the cache variables of its
volume (``CacheLayout.SERVER_ENV``) and kernel-warmup's sitecustomize first on PYTHONPATH,
as the operator sets a serving container. Prints a table last; the whole record goes to
``$OUT/bench_server_start.json`` and the server logs to ``$OUT/server-logs.tar.gz``.

    PYTHONPATH=<vLLM's site> python3 bench/bench_server_start.py --tokenizer .vxs/model \\
        --model llama8b=../shared/gpu-vllm/configs/llama31-8b.json [--model NAME=CONFIG[:extra args]]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "initcontainer"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_flashinfer_moe import CompilerWatch  # noqa: E402

from kernel_warmer import gpu  # noqa: E402
from kernel_warmer.cache.volume import CacheLayout  # noqa: E402
from kernel_warmer.server import command, process  # noqa: E402
from kernel_warmer.server.phase import cache_files, wait_memory_free, written  # noqa: E402

OUT = Path(os.environ.get("OUT") or "/tmp/kw-bench-out")
WORK = Path(os.environ.get("KW_BENCH_WORK") or "/root/kw-server-bench")
PORT = 8100
SITE = ROOT / "initcontainer" / "serving_site"
LISTENER = ROOT / "bench" / "compile_listener"


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(OUT / "bench_server_start.log", "a") as f:
        f.write(line + "\n")


def prepare_model(name: str, config: Path, tokenizer: Path) -> Path:
    """A model folder at a fixed path (vLLM's compile key hashes the path string): the
    shape's config.json, a generation config and a small real tokenizer."""
    folder = WORK / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(config.read_text())
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / f, folder / f)
    return folder


def base_env() -> dict[str, str]:
    """What every process of the run shares (the same in the warmer and every server)."""
    env = dict(os.environ)
    path = [os.path.dirname(sys.executable), *env.get("PATH", "").split(":")]
    if not shutil.which("nvcc"):
        path += [p for p in ("/usr/local/cuda/bin",) if os.path.isdir(p)]
    env.update(PATH=":".join(path), HOME=str(WORK / "home"), VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_HOST_IP="127.0.0.1", PYTHONUNBUFFERED="1",
               NCCL_NVLS_ENABLE="0")
    nvcc = shutil.which("nvcc", path=env["PATH"])
    if nvcc and not env.get("CUDA_HOME"):
        env["CUDA_HOME"] = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    (WORK / "home").mkdir(parents=True, exist_ok=True)
    return env


def serving_pythonpath() -> str:
    return os.pathsep.join([str(SITE), str(LISTENER), os.environ.get("PYTHONPATH", "")])


def serve(name: str, label: str, tokens: list[str], cache: Path) -> dict[str, Any]:
    """One real server start on ``cache``: time to /health, the request, the stop, and what
    the server compiled and wrote."""
    env = base_env()
    env.update(CacheLayout.server_env_for(str(cache)), PYTHONPATH=serving_pythonpath(),
               KW_BENCH_COMPILES=str(OUT / f"{name}-{label}.compiles.jsonl"))
    layout = CacheLayout(cache)
    for sub in CacheLayout.SERVER_DIRS:
        (cache / sub).mkdir(parents=True, exist_ok=True)
    before = cache_files(layout)
    baseline = gpu.memory_used()
    argv = [sys.executable, "-m", command.CLI_MODULE, "serve", *tokens]
    log(f"{name}/{label}: {' '.join(argv[3:])}")
    out: dict[str, Any] = {"label": label}
    t0 = time.monotonic()
    with CompilerWatch() as watch, open(OUT / f"{name}-{label}.server.log", "w") as server_log:
        server = process.start(argv, env, PORT, echo=lambda s: server_log.write(s + "\n"))
        try:
            out["health_s"] = round(process.wait_ready(server, time.monotonic() + 900, log), 2)
            out["request"] = process.exercise(server, 300)
        except process.ServerError as exc:
            out["error"] = str(exc)[-3000:]
        finally:
            out["stop"] = process.stop(server)
    out["wall_s"] = round(time.monotonic() - t0, 2)
    out["gpu_memory"] = wait_memory_free(baseline, time.monotonic() + 120, log)
    new = written(before, cache_files(layout))
    compiles = [json.loads(x) for x in (OUT / f"{name}-{label}.compiles.jsonl").read_text().splitlines()] \
        if (OUT / f"{name}-{label}.compiles.jsonl").exists() else []
    out.update(phases=server.log.phases, loaded_from_cache=server.log.from_cache[:8], compiled_now_lines=server.log.made,
               triton_compiles=sum(1 for c in compiles if c.get("hit") is False),
               triton_hits=sum(1 for c in compiles if c.get("hit") is True),
               listener_errors=[c["listener_error"] for c in compiles if "listener_error" in c][:3],
               compiled_kernels=sorted({c["name"] for c in compiles if c.get("hit") is False})[:40],
               compiler_processes=sorted(watch.seen)[:40], files_written=len(new), files_written_examples=new[:20])
    log(f"{name}/{label}: health {out.get('health_s')} s, {out['triton_compiles']} Triton compiles, "
        f"{len(watch.seen)} compiler processes, {len(new)} files written{', ERROR' if 'error' in out else ''}")
    return out


def warm(name: str, model: Path, tokens: list[str], cache: Path) -> dict[str, Any]:
    """``kernel-warmer run`` as the init container runs it: the spec the operator renders."""
    spec = {"model": {"configPath": str(model / "config.json")}, "cacheDir": str(cache), "timeoutSeconds": 1500,
            "server": {"warmup": "always", "args": tokens, "pythonpath": serving_pythonpath()}}
    env = base_env()
    env.update(KERNEL_WARMER_SPEC=json.dumps(spec), KW_BENCH_COMPILES=str(OUT / f"{name}-warmer.compiles.jsonl"),
               PYTHONPATH=os.pathsep.join([str(ROOT / "initcontainer"), os.environ.get("PYTHONPATH", "")]))
    t0 = time.monotonic()
    with open(OUT / f"{name}-warmer.log", "w") as f:
        proc = subprocess.run([sys.executable, "-m", "kernel_warmer", "run", "--spec-env", "KERNEL_WARMER_SPEC",
                               "--termination-log", "/nonexistent/x"], env=env, stdout=subprocess.PIPE,
                              stderr=f, text=True, timeout=1800)
    wall = round(time.monotonic() - t0, 2)
    try:
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        summary = {"status": "failed", "error": f"no summary (rc {proc.returncode})"}
    log(f"{name}/warmer: rc {proc.returncode} in {wall} s, status {summary.get('status')} {summary.get('error') or ''}")
    return {"rc": proc.returncode, "wall_s": wall, "summary": summary}


def check(cache: Path, model: Path, tokens: list[str]) -> dict[str, Any]:
    spec = {"model": {"configPath": str(model / "config.json")}, "cacheDir": str(cache),
            "server": {"warmup": "always", "args": tokens, "pythonpath": serving_pythonpath()}}
    env = base_env()
    env.update(KERNEL_WARMER_SPEC=json.dumps(spec),
               PYTHONPATH=os.pathsep.join([str(ROOT / "initcontainer"), os.environ.get("PYTHONPATH", "")]))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kernel_warmer", "check", "--spec-env", "KERNEL_WARMER_SPEC"],
                          env=env, capture_output=True, text=True, timeout=120)
    return {"rc": proc.returncode, "seconds": round(time.monotonic() - t0, 3), "said": proc.stdout.strip()[-400:]}


def one_model(name: str, config: Path, extra: list[str], tokenizer: Path) -> dict[str, Any]:
    model = prepare_model(name, config, tokenizer)
    tokens = [str(model), "--port", str(PORT), "--max-model-len", "4096", *extra]
    res: dict[str, Any] = {"model": name, "config": str(config), "args": tokens}
    cold_cache, warm_cache = WORK / f"{name}-cold", WORK / f"{name}-warm"
    for c in (cold_cache, warm_cache):
        shutil.rmtree(c, ignore_errors=True)
    res["cold"] = serve(name, "cold", tokens, cold_cache)
    dump(res, name)
    if "error" in res["cold"]:
        return res
    res["warmer"] = warm(name, model, tokens, warm_cache)
    dump(res, name)
    res["warmed"] = serve(name, "warmed", tokens, warm_cache)
    res["replica"] = serve(name, "replica", tokens, warm_cache)
    res["check_after"] = check(warm_cache, model, tokens)
    cold, warmed = res["cold"].get("health_s"), res["warmed"].get("health_s")
    res["ratio"] = round(warmed / cold, 3) if cold and warmed else None
    dump(res, name)
    return res


RESULTS: dict[str, Any] = {}


def dump(res: dict[str, Any], name: str) -> None:
    RESULTS[name] = res
    doc = {"date": time.strftime("%Y-%m-%d"), "card": card(), "versions": versions(), "results": RESULTS}
    (OUT / "bench_server_start.json").write_text(json.dumps(doc, indent=1, default=str))


def card() -> str:
    facts = gpu.probe()
    return facts.name if facts else "unknown"


def versions() -> dict[str, Any]:
    from kernel_warmer.versions import read_runtime

    return read_runtime().to_dict()


def table() -> str:
    rows = [("model", "cold /health", "warmer", "warmed /health", "ratio", "replica", "Triton compiles c/w/r",
             "compilers w", "files w", "check")]
    for name, r in RESULTS.items():
        c, w, p = r.get("cold", {}), r.get("warmed", {}), r.get("replica", {})
        rows.append((name, f"{c.get('health_s')} s", f"{(r.get('warmer') or {}).get('wall_s')} s",
                     f"{w.get('health_s')} s", str(r.get("ratio")), f"{p.get('health_s')} s",
                     f"{c.get('triton_compiles')}/{w.get('triton_compiles')}/{p.get('triton_compiles')}",
                     str(len(w.get("compiler_processes") or [])), str(w.get("files_written")),
                     f"{(r.get('check_after') or {}).get('rc')} in {(r.get('check_after') or {}).get('seconds')} s"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(widths[i]) for i, v in enumerate(row)) for row in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=CONFIG[:ARGS]",
                    help="a model shape and extra serving args, e.g. moe=qwen3.json:--enforce-eager")
    ap.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json, tokenizer_config.json")
    ap.add_argument("--fallback", metavar="NAME=CONFIG[:ARGS]", help="run this when a model's cold start fails")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    for spec in a.model:
        name, _, rest = spec.partition("=")
        config, _, extra = rest.partition(":")
        res = one_model(name, Path(config), extra.split(), a.tokenizer)
        if "error" in res["cold"] and a.fallback:
            fname, _, frest = a.fallback.partition("=")
            fconfig, _, fextra = frest.partition(":")
            one_model(fname, Path(fconfig), fextra.split(), a.tokenizer)
    with tarfile.open(OUT / "server-logs.tar.gz", "w:gz") as tar:
        for p in sorted(OUT.glob("*.log")) + sorted(OUT.glob("*.jsonl")):
            tar.add(p, arcname=p.name)
    print(table())
    print("BENCH_DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
