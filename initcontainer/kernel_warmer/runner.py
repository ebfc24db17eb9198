"""`run` and `check`: spec -> plan -> (lock, verify, compile, tune, manifest) -> summary.

``check`` and the warm path of ``run`` touch only the standard library: they hash the plan
and the environment and verify the manifest's checksums. torch and triton are imported
only when something must be compiled.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from kernel_warmer.cache.envkey import EnvKey, compute_env_key
from kernel_warmer.cache.manifest import (
    FileEntry,
    file_entries,
    manifest_key,
    repair,
    snapshot,
    verify,
    write_manifest,
)
from kernel_warmer import versions
from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.faults import fault_point
from kernel_warmer.gpu import probe as probe_gpu
from kernel_warmer.files import LockTimeout, file_lock
from kernel_warmer.plan.flashinfer import FlashInferPlan, plan_for_gpu
from kernel_warmer.plan.model import ModelArch, load_arch
from kernel_warmer.plan.triton import TritonPlan, plan_triton
from kernel_warmer.report import TritonCounts, WarmupSummary
from kernel_warmer.server import phase as server_phase
from kernel_warmer.spec import WarmerSpec
from kernel_warmer.triton import providers

Log = Callable[[str], None]


@dataclass(frozen=True)
class Resolved:
    """Everything `check` and `run` derive from a spec without touching a GPU."""

    spec: WarmerSpec
    arch: ModelArch
    triton: TritonPlan
    provider: str
    target: Optional[str]
    env: EnvKey
    key: str
    key_doc: dict = field(repr=False, default_factory=dict)
    # None: FlashInfer off, or the GPU unknown here (NVML absent; the phase plans with torch)
    flashinfer: Optional[FlashInferPlan] = None
    runtime: Optional[versions.Runtime] = None
    server: Optional[server_phase.Decision] = None  # the engine phase: whether it runs, and why

    @property
    def layout(self) -> CacheLayout:
        return CacheLayout(Path(self.spec.cache_dir))


# Bumped when the manifest's meaning changes: an older manifest then reads as cold.
# 3: the key is the resolved work (issue 23); the FlashInfer half used to be a field list.
KEY_FORMAT = 3


def key_document(spec: WarmerSpec, arch: ModelArch, triton: TritonPlan, provider: str,
                 flashinfer: Optional[FlashInferPlan], flashinfer_installed: bool = True,
                 server: Optional[dict] = None) -> dict:
    """The plan half of the manifest key: the work itself (what is compiled and tuned), so it
    changes exactly when the work does; the environment half is ``EnvKey`` (versions, GPU
    model, Triton's env). Where the GPU is unknown the FlashInfer work cannot be resolved
    here, and every input of its plan stands in for it."""
    fi: Any = None
    if spec.flashinfer.enabled and not flashinfer_installed:
        fi = "not installed"  # the phase does nothing, whatever the spec asks of it
    elif spec.flashinfer.enabled:
        fi = flashinfer.key_doc() if flashinfer is not None else {"unresolved": unresolved_inputs(spec, arch)}
    return {
        "format": KEY_FORMAT,
        "triton": {
            "kernel": providers.kernel_fingerprint(provider) if provider != "none" else None,
            "variants": [v.to_dict() for v in triton.variants] if spec.triton.enabled and provider != "none" else [],
        },
        "flashinfer": fi,
        # the engine phase: the serving args but the load format, vLLM's version and VLLM_* env
        "server": server,
    }


def unresolved_inputs(spec: WarmerSpec, arch: ModelArch) -> dict:
    """Every input of the FlashInfer plan but the GPU (whose model is in the env key)."""
    moe = arch.moe
    # sharded and rank0 tuning write the same bytes (tests/unit/test_dist_sharded.py)
    fi = {k: v for k, v in _dump_section(spec.flashinfer).items() if k != "tuning"}
    return {
        "flashinfer": fi, "engine": _dump_section(spec.engine), "tensorParallelSize": spec.tensor_parallel_size,
        "arch": {"dtype": arch.dtype, "hidden": arch.hidden_size, "intermediate": arch.intermediate_size,
                 "layers": arch.num_hidden_layers, "quantization": arch.quantization,
                 "fp8Block": arch.fp8_block_scaled, "fp8Activation": arch.fp8_activation_scheme,
                 "heads": sorted({(a.num_heads, a.num_kv_heads, a.head_size) for a in arch.attention_layers}),
                 "moe": [moe.num_experts, moe.experts_per_token, moe.intermediate_size,
                         moe.shared_expert_intermediate_size] if moe else None},
    }


def _dump_section(section: Any) -> dict:
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


def resolve(spec: WarmerSpec) -> Resolved:
    arch = load_arch(spec.model, spec.dtype)
    triton = plan_triton(arch, spec.tensor_parallel_size, spec.dtype, spec.engine)
    target = spec.triton.compile_only_target
    provider = (providers.resolve(spec.triton.provider) or "none") if spec.triton.enabled else "none"
    env = compute_env_key(target)
    runtime = versions.read_runtime()
    has_fi = runtime.flashinfer is not None
    gpu = probe_gpu() if has_fi and not target and spec.flashinfer.enabled else None
    fi_plan = plan_for_gpu(spec, arch, gpu, runtime.vllm_facts.facts)
    decision = server_phase.plan(spec)
    doc = key_document(spec, arch, triton, provider, fi_plan, has_fi, server_phase.key_doc(decision))
    return Resolved(spec, arch, triton, provider, target, env, manifest_key(doc, env.to_dict()), doc, fi_plan, runtime,
                    decision)


def version_warnings(r: Resolved) -> list[str]:
    """What the table rows say of this image: an unknown release, a FlashInfer other than
    vLLM's pin, a flag the release refuses, a kernel that is not the release's own file."""
    rt = r.runtime
    out = rt.warnings()
    if rt.vllm:
        out += versions.unknown_names(rt.vllm_facts.facts, r.spec.engine)
        if r.provider == "vllm" and rt.vllm_facts.exact:
            found = providers.kernel_sha256()
            if found and found != rt.vllm_facts.facts.kernel_sha256:
                out.append(f"vLLM {rt.vllm}'s prefill kernel is not the released file (sha256 {found[:12]}, released "
                           f"{rt.vllm_facts.facts.kernel_sha256[:12]}: a patched build?); it is compiled as it is, "
                           f"called as vLLM {rt.vllm_facts.facts.label}'s call sites call it")
    return out


def check(spec: WarmerSpec) -> tuple[bool, str, str]:
    """(warm, reason, key) without importing torch or triton."""
    r = resolve(spec)
    verdict = verify(r.layout, r.key)
    return verdict.warm, verdict.reason, r.key


def run(spec: WarmerSpec, log: Log, sequential: bool = False) -> WarmupSummary:
    """Warm the cache for ``spec``; never raises (the summary carries the failure)."""
    start = time.monotonic()
    summary = WarmupSummary()
    layout: Optional[CacheLayout] = None
    try:
        r = resolve(spec)
        summary.cache_key = r.key
        summary.versions = r.runtime.to_dict()
        summary.warnings = version_warnings(r)
        for w in summary.warnings:
            log(f"WARNING: {w}")
        summary.triton.skipped = len(r.triton.skipped)
        summary.details["skippedLayers"] = [s.to_dict() for s in r.triton.skipped][:64]
        summary.details["provider"] = r.provider
        summary.details["unreached"] = list(r.triton.unreached)
        if r.provider == "none" and r.triton.variants and r.spec.triton.enabled:
            summary.details["unreached"].append("vLLM is not importable in this image: nothing of vLLM's to compile")
        for why in summary.details["unreached"]:
            log(f"triton: nothing to warm for {why}")
        layout = r.layout
        log(f"plan: {len(r.triton.variants)} triton variant(s), {len(r.triton.skipped)} layer(s) skipped, "
            f"provider {r.provider}, key {r.key[:12]}")
        if layout.root.is_dir() and not os.access(layout.root, os.W_OK):
            _run_read_only(r, summary, log)
        else:
            for note in layout.create():
                log(f"repair: {note}")
            with file_lock(layout.lock_path, timeout_s=float(spec.timeout_seconds)) as waited:
                fault_point("locked")
                if waited > 1.0:
                    log(f"cache lock: waited {waited:.1f}s for another warmer")
                stale = layout.sweep_temp_files()
                if stale:
                    log(f"repair: removed {len(stale)} temp file(s) a killed warmer left")
                verdict = _checked(r, summary)
                if verdict.warm:
                    _mark_warm(r, summary, verdict.reason, log)
                else:
                    log(f"cold: {verdict.reason}")
                    if verdict.bad_files or verdict.damaged:
                        removed = repair(layout, r.key, verdict.bad_files)
                        log(f"repair: removed {len(removed)} damaged entr(y/ies) before rebuilding")
                    _warm(r, summary, log, sequential, start)
    except LockTimeout as exc:
        summary.status, summary.error = "failed", str(exc)
    except OSError as exc:
        summary.status, summary.error = "failed", describe_os_error(exc, layout)
    except Exception as exc:  # noqa: BLE001 - the summary is the contract: report, never crash
        summary.status = "failed"
        summary.error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc.__cause__, OSError):
            summary.error += f" ({describe_os_error(exc.__cause__, layout)})"
    summary.seconds = time.monotonic() - start
    return summary


def _checked(r: Resolved, summary: WarmupSummary) -> Any:
    """The cache check, timed, its answer in the summary (``phases.check``, ``cache``)."""
    start = time.monotonic()
    verdict = verify(r.layout, r.key)
    summary.phases["check"] = time.monotonic() - start
    summary.cache = "warm" if verdict.warm else "cold"
    return verdict


def _mark_warm(r: Resolved, summary: WarmupSummary, reason: str, log: Log) -> None:
    log(f"warm: {reason}")
    summary.triton.hit = len(r.triton.variants) if r.spec.triton.enabled else 0
    summary.flashinfer = {"status": "warm (manifest verified)"} if r.spec.flashinfer.enabled else {}
    if r.server is not None and r.server.run:
        summary.server = {"status": "warm (manifest verified)"}
    summary.details["warm"] = True


def _run_read_only(r: Resolved, summary: WarmupSummary, log: Log) -> None:
    """A read-only cache volume (e.g. a pre-warmed ReadOnlyMany PVC): nothing can be
    written, so no lock is needed; warm is fine, cold is a clear failure."""
    verdict = _checked(r, summary)
    if verdict.warm:
        _mark_warm(r, summary, f"{verdict.reason} (read-only cache volume)", log)
        return
    summary.status = "failed"
    summary.error = (f"cache volume {r.layout.root} is read-only and not warm for this plan ({verdict.reason}); "
                     "mount it read-write for the warmer, or pre-warm it with this exact plan and environment")


_VOLUME_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def describe_os_error(exc: OSError, layout: Optional[CacheLayout]) -> str:
    """An I/O failure in words that say what to change (full volume, read-only mount)."""
    where = f"cache volume {layout.root}" if layout is not None else "the cache volume"
    name = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{where} is full (ENOSPC{name}); nothing partial was recorded as warm. Give the volume more "
                f"space (spec.cache emptyDir.sizeLimit or the PVC size) and restart the pod")
    if exc.errno == errno.EROFS:
        return f"{where} is read-only{name}; mount it read-write for the warmer"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"{where}: permission denied{name}; the warmer runs as the serving container's user, "
                "which must be able to write the volume (fsGroup or the volume's ownership)")
    return f"{type(exc).__name__}: {exc}"


def _warm(r: Resolved, summary: WarmupSummary, log: Log, sequential: bool, started: float) -> None:
    spec, layout = r.spec, r.layout
    # One door: the cache's folders come from the spec (the layout), for this process and
    # everything it starts (compile workers, tuning workers, the engine phase's server).
    os.environ.update(CacheLayout.server_env_for(str(layout.root)))
    files: list[FileEntry] = []
    if spec.triton.enabled and r.triton.variants and r.provider != "none":
        before = snapshot(layout.triton_dir)
        from kernel_warmer.triton.compile import (
            compile_variants,  # imports nothing heavy itself; workers do
        )

        started = time.monotonic()
        results = compile_variants(r.triton.variants, layout.triton_dir, r.provider, target=r.target,
                                   workers=spec.triton.workers, log=log, sequential=sequential)
        summary.phases["triton_compile"] = time.monotonic() - started
        counts = {s: sum(1 for x in results if x.status == s) for s in ("compiled", "hit", "failed")}
        summary.triton = TritonCounts(compiled=counts["compiled"], hit=counts["hit"],
                                      skipped=summary.triton.skipped, failed=counts["failed"])
        summary.details["variants"] = [x.to_dict() for x in results]
        if counts["failed"]:
            first = next(x for x in results if x.status == "failed")
            io = next((x for x in results if x.os_errno in _VOLUME_ERRNOS), None)
            if io is not None:  # the volume, not the kernel: say so (describe_os_error)
                raise OSError(io.os_errno, os.strerror(io.os_errno), io.os_filename)
            raise RuntimeError(f"{counts['failed']} triton variant(s) failed; first: {first.variant.label}: "
                               f"{(first.error or '').strip().splitlines()[-1:]}")
        after = snapshot(layout.triton_dir)
        written = {p for p, st in after.items() if before.get(p) != st}
        kernel_files = {f for x in results for f in x.files}
        files += file_entries(layout, sorted(written | kernel_files))
        fault_point("compiled")
    if spec.flashinfer.enabled:
        from kernel_warmer.flashinfer.phase import (
            run_phase,  # written alongside; lazy: it imports flashinfer inside
        )

        fi = run_phase(spec, r.arch, layout, log, r.flashinfer)
        summary.flashinfer = fi
        for phase, key in (("flashinfer_jit", "jit_seconds"), ("flashinfer_tune", "tune_seconds")):
            if isinstance(fi.get(key), (int, float)) and not isinstance(fi.get(key), bool):
                summary.phases[phase] = float(fi[key])
        fi_paths = [Path(f["path"]) if Path(f["path"]).is_absolute() else layout.root / f["path"]
                    for f in fi.get("files") or []]
        files += file_entries(layout, fi_paths)
    files += _engine_phase(r, summary, log, started + spec.timeout_seconds)
    write_manifest(layout, r.key, r.key_doc, r.env.to_dict(), files,
                   {"triton": dict(summary.triton.__dict__), "provider": r.provider, "target": r.target})
    summary.details["manifestFiles"] = len(files)
    log(f"manifest: {r.key} ({len(files)} file(s))")
    fault_point("manifest-written")


def _engine_phase(r: Resolved, summary: WarmupSummary, log: Log, deadline: float) -> list[FileEntry]:
    """The engine phase after the planned work (its server then finds those kernels and
    tactics); the files it wrote, for the manifest."""
    decision = r.server
    if decision is None or not decision.run:
        why = decision.reason if decision is not None else "not planned"
        summary.server = {"status": "skipped", "reason": why}
        log(f"engine: skipped: {why}")
        if r.spec.server.warmup == "always":
            raise RuntimeError(f"engine phase: {why}")
        return []
    result = server_phase.run_engine(r.spec, r.layout, decision.serve, deadline, log)
    summary.server = server_phase.summary_fields(result)
    summary.phases["engine"] = float(result["seconds"])
    for name, secs in (result.get("phases") or {}).items():
        summary.phases[f"vllm_{name}"] = float(secs)
    return file_entries(r.layout, result["files"])


def write_termination_message(summary: WarmupSummary, path: str) -> bool:
    """Write the compact summary where Kubernetes reads it; skip when the folder is absent
    (not in a pod). Returns whether it wrote."""
    p = Path(path)
    if not p.parent.is_dir():
        return False
    try:
        p.write_text(summary.compact_json())
    except OSError:
        return False
    return True


def spec_json(spec: WarmerSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)
