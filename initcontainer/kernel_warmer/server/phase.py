"""The engine phase: the serving container's own vLLM, with dummy weights, on the Pod's GPUs.

It runs after the planned Triton and FlashInfer work, so the server it starts finds those
kernels and tactics already there (nothing is done twice), and it warms what only vLLM
itself knows to build: torch.compile's (AOT) artefacts, DeepGEMM and FlashInfer JIT
modules, vLLM's own Triton kernels, FlashInfer's tuning where vLLM does it. Every cache the
server writes is on the cache volume (``CacheLayout.SERVER_ENV``), and the real server gets
the same variables from the operator. The files it wrote go into the manifest, so `check`
reads a missing or altered one as cold.

When it runs (``spec.server.warmup``): ``never``; ``always`` (a failure where it cannot:
no vLLM, no GPU, no serving command); ``auto``: where vLLM is importable, the Pod has GPUs,
the serving command starts vLLM, and the world is this Pod's (a multi-Pod world starts its
server through its leader, which a lone init container cannot).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from kernel_warmer import gpu, versions
from kernel_warmer.cache.untrusted import regular_files
from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.server import command, process
from kernel_warmer.spec import SPEC_ENV, WarmerSpec

Log = Callable[[str], None]
# Files the server rewrites at every start, or that only guard a write: never in a manifest
VOLATILE_SUFFIXES = (".lock", ".log", ".tmp", ".pid")
MAX_FILES = 200_000  # a walk over a hostile volume is bounded
MEMORY_SLACK = 1 << 30  # GPU memory left in use after the stop that still counts as free
MEMORY_WAIT_S = 60.0


@dataclass(frozen=True)
class Decision:
    run: bool
    reason: str
    serve: Optional[command.ServeArgv] = None


def decide(spec: WarmerSpec, vllm_importable: bool, has_gpu: bool) -> Decision:
    """Whether the engine phase runs, and why (pure, given what the image and Pod have)."""
    mode = spec.server.warmup
    if mode == "never":
        return Decision(False, "spec.engineWarmup is never")
    why_not = None
    serve = None
    if not (spec.server.command or spec.server.args):
        why_not = "the warmer was given no serving command (server.command/args)"
    else:
        try:
            serve = command.serve_argv(spec.server.command, spec.server.args)
        except command.ServeCommandError as exc:
            why_not = str(exc)
    if why_not is None and not vllm_importable:
        why_not = "vLLM's server (vllm.entrypoints.cli.main) is not importable in this image"
    if why_not is None and not has_gpu:
        why_not = "no GPU is visible (compile-only or CPU node)"
    if why_not is None and spec.triton.compile_only_target:
        why_not = "the warmup is compile-only (triton.compileOnlyTarget)"
    world = spec.distributed.world_size
    if why_not is None and world is not None and world > 1 and spec.distributed.master_addr:
        why_not = "the world spans Pods (its server starts through its leader)"
    if why_not is not None:
        if mode == "always":
            return Decision(False, f"spec.engineWarmup is always, but {why_not}")
        return Decision(False, why_not)
    return Decision(True, f"spec.engineWarmup is {mode}", serve)


def image_has_vllm() -> bool:
    """Whether vLLM's server is in this image: its CLI module's file, found without
    importing vLLM (``check`` stays light; a kernel-only vLLM tree has no server)."""
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return False
    roots = list(spec.submodule_search_locations or []) if spec else []
    return any((Path(r) / "entrypoints" / "cli" / "main.py").is_file() for r in roots)


def pod_has_gpu() -> bool:
    from kernel_warmer.cache.envkey import gpu_models

    return gpu.probe() is not None or bool(gpu_models())


def server_env(spec: WarmerSpec, layout: CacheLayout, base: Optional[dict] = None) -> dict[str, str]:
    """The serving container's env as the server sees it: the warmer's (the operator gives
    it the serving container's), the serving PYTHONPATH (the sitecustomize that hands our
    FlashInfer tactics to vLLM), and the cache variables of this volume."""
    env = dict(os.environ if base is None else base)
    env.pop(SPEC_ENV, None)
    if spec.server.pythonpath is not None:
        env["PYTHONPATH"] = spec.server.pythonpath
    env.update(CacheLayout.server_env_for(str(layout.root)))
    return env


def cache_files(layout: CacheLayout) -> dict[str, tuple[int, int]]:
    """Regular files under the folders the server writes: relative path -> (size, mtime)."""
    out: dict[str, tuple[int, int]] = {}
    for sub in CacheLayout.SERVER_DIRS:
        for rel, st in regular_files(layout.root, sub, depth=16):
            # a writer's temp file (".name.tmp-...") or a lock/log; hidden folders are kept:
            # FlashInfer's JIT modules live under flashinfer-jit/.cache/
            if rel.endswith(VOLATILE_SUFFIXES) or rel.rsplit("/", 1)[-1].startswith("."):
                continue
            out[rel] = (st.st_size, st.st_mtime_ns)
            if len(out) >= MAX_FILES:
                return out
    return out


def written(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    return sorted(p for p, st in after.items() if before.get(p) != st)


def wait_memory_free(baseline: Optional[list[int]], deadline: float, log: Log) -> dict[str, Any]:
    """Block until every GPU holds no more than ``baseline`` + 1 GiB again (the server
    about to start needs it), or raise naming what is still held."""
    if baseline is None:
        return {"checked": False, "why": "NVML is not readable here"}
    end = min(deadline, time.monotonic() + MEMORY_WAIT_S)
    used = gpu.memory_used() or baseline
    while any(u > b + MEMORY_SLACK for u, b in zip(used, baseline)):
        if time.monotonic() >= end:
            held = [round((u - b) / (1 << 30), 2) for u, b in zip(used, baseline)]
            raise process.ServerError(f"the warmer's vLLM left GPU memory in use after it stopped ({held} GiB "
                                      "above what was used before it started, per GPU)")
        time.sleep(0.5)
        used = gpu.memory_used() or baseline
    log(f"engine: GPU memory free again ({[round(u / (1 << 30), 2) for u in used]} GiB in use)")
    return {"checked": True, "used_gib": [round(u / (1 << 30), 2) for u in used]}


def run_engine(spec: WarmerSpec, layout: CacheLayout, serve: command.ServeArgv, deadline: float,
               log: Log) -> dict[str, Any]:
    """Start, wait for /health, one request, stop, check the GPU is free; the files the
    server wrote (relative to the cache root) and vLLM's phase seconds. Raises on failure
    (the runner reports it under the failure policy)."""
    before = cache_files(layout)
    baseline = gpu.memory_used()
    port = process.free_port()
    argv = serve.argv(sys.executable, port)
    log(f"engine: starting the serving command with --load-format dummy --port {port} ({serve.how})")
    t0 = time.monotonic()
    server = process.start(argv, server_env(spec, layout), port)
    result: dict[str, Any] = {"argv": argv}
    try:
        result["ready_s"] = round(process.wait_ready(server, deadline, log), 3)
        log(f"engine: vLLM ready in {result['ready_s']:.1f}s; one request")
        result["request"] = process.exercise(server, max(10.0, deadline - time.monotonic()))
    finally:
        result["stop"] = process.stop(server)
        result["phases"] = dict(server.log.phases)
        result["from_cache"] = list(server.log.from_cache)
        result["compiled_now"] = server.log.made
    result["gpu_memory"] = wait_memory_free(baseline, deadline, log)
    files = written(before, cache_files(layout))
    result.update(status="ok", seconds=round(time.monotonic() - t0, 3), files_written=len(files),
                  files=[str(layout.root / f) for f in files])
    log(f"engine: done in {result['seconds']:.1f}s: {len(files)} cache file(s) written; vLLM's phases "
        + ", ".join(f"{k} {v:.1f}s" for k, v in result["phases"].items()))
    return result


def summary_fields(result: dict[str, Any]) -> dict[str, Any]:
    """What of the phase goes into the summary (its file list goes into the manifest)."""
    keep = ("status", "reason", "seconds", "ready_s", "files_written", "phases", "request", "stop", "gpu_memory",
            "from_cache", "compiled_now", "error")
    return {k: result[k] for k in keep if k in result}


def plan(spec: WarmerSpec) -> Decision:
    """The decision for this image and Pod (reads what is installed and the GPUs)."""
    return decide(spec, image_has_vllm(), pod_has_gpu())


def key_doc(decision: Decision) -> Optional[dict]:
    if not decision.run or decision.serve is None:
        return None
    return command.key_doc(decision.serve, os.environ, versions.installed("vllm"))

