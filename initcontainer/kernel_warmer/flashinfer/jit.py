"""FlashInfer's JIT builds on the cache volume: where they go, building the planned modules
under a deadline, and the list of modules the manifest checks (FlashInfer 0.6.18 facts).

- FlashInfer builds into ``$FLASHINFER_WORKSPACE_BASE/.cache/flashinfer/<version>/<arch>/
  cached_ops/<module>/<module>.so`` (jit/env.py; default base ``$HOME``, which dies with the
  init container). The operator sets the base to ``<mount>/flashinfer-jit`` in the warmer
  and the serving container; run outside a pod, the warmer sets it itself.
- ``JitSpec.build_and_load`` takes ``filelock.FileLock(cached_ops/tmp/<module>.lock)``,
  checks again, runs ninja, then loads (jit/core.py): two builders of one module never
  interleave. ``discard_partial`` takes the same lock before it deletes anything.
- A ``.so`` existing is what makes FlashInfer (and ninja) treat a module as built, so a
  build killed at the deadline must not leave one: ninja is stopped (SIGTERM lets it
  remove the outputs of interrupted commands), then the module's ``.so`` is deleted.
- FlashInfer's FP8 block-scale GEMM (``fp8_blockscale_gemm_sm90``) also compiles a DeepGEMM
  kernel with nvcc per shape and M-dependent block config on first use, into
  ``$TRTLLM_DG_CACHE_DIR/cache/<kernel>/nvcc_kernel.cubin`` (default ``$HOME/.tensorrt_llm``;
  deep_gemm/compiler.cuh, runtime.cuh): the operator points it at ``<mount>/flashinfer-jit/
  deepgemm`` too, and the warmer compiles them by calling the op (``jitcalls.py``). The
  cubin is written to a temporary folder and renamed into place, so a killed compile
  leaves nothing that loads.
- With ``flashinfer-jit-cache`` (or ``flashinfer-cubin``) installed, FlashInfer loads
  prebuilt kernels (jit/env.py ``FLASHINFER_AOT_DIR``/``FLASHINFER_CUBIN_DIR``): the warmer
  builds nothing and says so.

The build runs in a child process (its own session, so the deadline can stop ninja and
every nvcc with it); the child imports FlashInfer and asks for the module the way
``cutlass_fused_moe`` does (``get_cutlass_fused_moe_module(<sm>)``, fused_moe/core.py:586).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from kernel_warmer.files import file_lock
from kernel_warmer.heartbeat import Heartbeat
from kernel_warmer.plan.flashinfer import FP8_BLOCK_OP, MOE_OP, AutoTuneOp, JitCall

ENV_BASE = "FLASHINFER_WORKSPACE_BASE"
ENV_DEEPGEMM = "TRTLLM_DG_CACHE_DIR"
DEEPGEMM_KERNEL = "nvcc_kernel.cubin"  # deep_gemm/runtime.cuh kKernelName (FlashInfer always uses nvcc)
PREBUILT_PACKAGES = {"flashinfer_jit_cache": "flashinfer-jit-cache", "flashinfer_cubin": "flashinfer-cubin"}
CACHED_OPS_GLOB = ".cache/flashinfer/*/*/cached_ops"
STOP_GRACE_S = 10.0
Log = Callable[[str], None]


@dataclass(frozen=True)
class JitModule:
    name: str  # FlashInfer's module name, the folder under cached_ops
    argv: list[str]  # a child command that builds (and loads) it


class JitTimeout(RuntimeError):
    pass


class JitBuildError(RuntimeError):
    pass


@dataclass
class JitReport:
    seconds: float = 0.0
    modules_built: list[str] = field(default_factory=list)
    prebuilt: Optional[str] = None
    jobs: str = ""
    kernels_compiled: int = 0  # DeepGEMM kernels the planned JIT calls compiled

    def to_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "modules_built": self.modules_built,
                "prebuilt": self.prebuilt, "jobs": self.jobs, "kernels_compiled": self.kernels_compiled}


def prebuilt_packages() -> Optional[str]:
    """'flashinfer-jit-cache 0.6.18+cu130, ...' when FlashInfer ships prebuilt kernels here."""
    found = []
    for module, dist in PREBUILT_PACKAGES.items():
        if importlib.util.find_spec(module) is not None:
            try:
                found.append(f"{dist} {importlib.metadata.version(dist)}")
            except importlib.metadata.PackageNotFoundError:
                found.append(dist)
    return ", ".join(found) or None


def ensure_workspace(default: Path, environ: Optional[dict] = None) -> Path:
    """FLASHINFER_WORKSPACE_BASE: the operator's value, else ``default`` (set for this process
    and every child it starts, before anything imports FlashInfer)."""
    env = os.environ if environ is None else environ
    if not env.get(ENV_BASE):
        env[ENV_BASE] = str(default)
    return Path(env[ENV_BASE])


def ensure_deepgemm_cache(default: Path, environ: Optional[dict] = None) -> Path:
    """TRTLLM_DG_CACHE_DIR: the operator's value, else ``default`` (for every child)."""
    env = os.environ if environ is None else environ
    if not env.get(ENV_DEEPGEMM):
        env[ENV_DEEPGEMM] = str(default)
    return Path(env[ENV_DEEPGEMM])


def deepgemm_dir(workspace: Path) -> Path:
    """Where the DeepGEMM kernels go: TRTLLM_DG_CACHE_DIR, else beside the JIT modules."""
    return Path(os.environ.get(ENV_DEEPGEMM) or workspace / "deepgemm")


def deepgemm_kernels(dg_dir: Path) -> list[Path]:
    """Every compiled DeepGEMM kernel: ``cache/<kernel>/nvcc_kernel.cubin``."""
    return sorted((dg_dir / "cache").glob(f"*/{DEEPGEMM_KERNEL}")) if (dg_dir / "cache").is_dir() else []


def cached_ops_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.glob(CACHED_OPS_GLOB) if p.is_dir())


def module_libraries(base: Path) -> list[Path]:
    """Every built module: ``cached_ops/<name>/<name>.so`` (FlashInfer's layout)."""
    return [so for d in cached_ops_dirs(base) for so in sorted(d.glob("*/*.so")) if so.stem == so.parent.name]


def library_state(base: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for so in module_libraries(base):
        st = so.stat()
        out[str(so)] = (st.st_size, st.st_mtime_ns)
    return out


def built_since(before: dict[str, tuple[int, int]], base: Path) -> list[str]:
    """Names of modules whose library appeared or changed since ``before``."""
    after = library_state(base)
    return sorted({Path(p).stem for p, st in after.items() if before.get(p) != st})


@contextlib.contextmanager
def module_lock(cached_ops: Path, name: str, timeout_s: float = 600.0) -> Iterator[None]:
    """FlashInfer's own per-module lock (filelock at cached_ops/tmp/<name>.lock)."""
    path = cached_ops / "tmp" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from filelock import FileLock
    except ImportError:  # FlashInfer depends on filelock; on Unix both are flock
        with file_lock(path, timeout_s=timeout_s):
            yield
        return
    with FileLock(str(path), timeout=timeout_s, thread_local=False):
        yield


def discard_partial(base: Path, name: str) -> list[Path]:
    """Delete ``name``'s library wherever it is, under the module's lock: after a stopped
    build nothing may look complete (ninja relinks from its surviving objects)."""
    removed = []
    for cached_ops in cached_ops_dirs(base):
        so = cached_ops / name / f"{name}.so"
        with module_lock(cached_ops, name):
            if so.exists():
                so.unlink()
                removed.append(so)
    return removed


def modules_for(ops: list[AutoTuneOp], sm: int, calls: tuple[JitCall, ...] = ()) -> list[JitModule]:
    """The JIT modules the planned ops and calls load, built before tuning so their time is
    apart. Other modules (GEMM runners, the profiler's helpers) build lazily while tuning and
    are found afterwards by ``built_since``."""
    mods: dict[str, JitModule] = {}
    if any(op.op == MOE_OP for op in ops):
        code = "import sys; from flashinfer.fused_moe.core import get_cutlass_fused_moe_module as g; g(sys.argv[1])"
        mods[f"fused_moe_{sm}"] = JitModule(f"fused_moe_{sm}", [sys.executable, "-c", code, str(sm)])
    if any(c.op == FP8_BLOCK_OP for c in calls):
        # what get_fp8_blockscale_gemm_runner_sm90 builds (flashinfer/gemm/gemm_base.py:9091-9100)
        code = "from flashinfer.jit.gemm import gen_fp8_blockscale_gemm_sm90_module as g; g().build_and_load()"
        mods["fp8_blockscale_gemm_90"] = JitModule("fp8_blockscale_gemm_90", [sys.executable, "-c", code])
    return list(mods.values())


def object_count(base: Path, name: str) -> int:
    return sum(1 for d in cached_ops_dirs(base) for _ in (d / name).glob("*.o"))


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the build's whole session (ninja cleans up interrupted outputs), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def build_module(mod: JitModule, base: Path, timeout_s: float, beat: Heartbeat, log: Log) -> float:
    """Build one module in a child under ``timeout_s``; returns seconds. Raises JitTimeout
    (nothing half-built left) or JitBuildError, both naming the module."""
    beat.update(mod.name, progress=lambda: f"{object_count(base, mod.name)} object file(s)")
    start = time.monotonic()
    proc = subprocess.Popen(mod.argv, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=max(timeout_s, 0.1))
    except subprocess.TimeoutExpired:
        _stop(proc)
        objects = object_count(base, mod.name)
        removed = discard_partial(base, mod.name)
        raise JitTimeout(
            f"FlashInfer JIT build of module {mod.name} exceeded the warmer's timeout ({timeout_s:.0f}s left of "
            f"spec.timeoutSeconds) with {objects} object file(s) built; stopped, and its library "
            f"{'removed' if removed else 'was never written'}, so nothing half-built looks complete. Raise "
            f"spec.timeoutSeconds, give the warmer more CPU and memory, or install flashinfer-jit-cache") from None
    secs = time.monotonic() - start
    if proc.returncode != 0:
        discard_partial(base, mod.name)
        tail = "\n".join((output or "").strip().splitlines()[-15:])
        raise JitBuildError(f"FlashInfer JIT build of module {mod.name} failed (exit {proc.returncode}):\n{tail}")
    log(f"flashinfer jit: {mod.name} ready in {secs:.1f}s")
    return secs


def compile_calls(calls: tuple[JitCall, ...], dg_dir: Path, timeout_s: float, beat: Heartbeat, log: Log) -> int:
    """Call each planned op at its shapes in a child on GPU 0, so the kernels it compiles on
    first use land in ``dg_dir``; returns how many were new. Raises JitTimeout / JitBuildError."""
    before = set(deepgemm_kernels(dg_dir))
    beat.update("DeepGEMM kernels", progress=lambda: f"{len(deepgemm_kernels(dg_dir))} kernel(s) in the cache")
    argv = [sys.executable, "-m", "kernel_warmer.flashinfer.jitcalls", json.dumps([c.to_dict() for c in calls])]
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, ENV_DEEPGEMM: str(dg_dir)})
    try:
        output, _ = proc.communicate(timeout=max(timeout_s, 0.1))
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise JitTimeout(
            f"compiling FlashInfer's {calls[0].op} kernels exceeded the warmer's timeout ({timeout_s:.0f}s left of "
            f"spec.timeoutSeconds) with {len(set(deepgemm_kernels(dg_dir)) - before)} new kernel(s); each is renamed "
            "into place when complete, so nothing half-built loads. Raise spec.timeoutSeconds") from None
    if proc.returncode != 0:
        tail = "\n".join((output or "").strip().splitlines()[-15:])
        raise JitBuildError(f"calling FlashInfer's {calls[0].op} to compile its kernels failed (exit {proc.returncode}):\n{tail}")
    new = len(set(deepgemm_kernels(dg_dir)) - before)
    log(f"flashinfer jit: {len(calls)} {calls[0].op} shape(s) called at M < 32: {new} new DeepGEMM kernel(s) in {dg_dir}")
    return new


def build_modules(mods: list[JitModule], base: Path, timeout_s: float, log: Log,
                  interval_s: Optional[float] = None) -> float:
    """Build every module in turn under one deadline, with a heartbeat; returns seconds."""
    return build_all(mods, (), base, None, timeout_s, log, interval_s)[0]


def build_all(mods: list[JitModule], calls: tuple[JitCall, ...], base: Path, dg_dir: Optional[Path],
              timeout_s: float, log: Log, interval_s: Optional[float] = None) -> tuple[float, int]:
    """The modules, then the planned calls' kernels, under one deadline and one heartbeat;
    returns (seconds, new DeepGEMM kernels)."""
    start = time.monotonic()
    kernels = 0
    kwargs = {} if interval_s is None else {"interval_s": interval_s}
    with Heartbeat(log, "flashinfer jit", **kwargs) as beat:
        for mod in mods:
            build_module(mod, base, timeout_s - (time.monotonic() - start), beat, log)
        if calls and dg_dir is not None:
            kernels = compile_calls(calls, dg_dir, timeout_s - (time.monotonic() - start), beat, log)
    return time.monotonic() - start, kernels
