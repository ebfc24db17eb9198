"""The FlashInfer phase as ``kernel-warmer run`` runs it: one worker per GPU, rank 0 tunes, every rank verifies."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from kernel_warmer import versions
from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.files import sha256_file
from kernel_warmer.flashinfer import jit, tactics
from kernel_warmer.flashinfer.jobs import plan_jobs
from kernel_warmer.flashinfer.tune import (
    BF16_BACKENDS,
    FP8_BACKENDS,
    TUNE_FILE,
    VLLM_BF16_BACKENDS,
    VLLM_FP8_BACKENDS,
    current_env_key,
    current_sm,
    backends_by_op,
    flashinfer_available,
    tune_items,
    tune_ops,
)
from kernel_warmer.gpu import GpuFacts
from kernel_warmer.plan.flashinfer import AutoTuneOp, FlashInferPlan, JitCall, plan_for_gpu
from kernel_warmer.plan.shard import work_items


@dataclass
class AutotuneJob:
    """Runs in every spawned worker: the ranks tune (sharded: a share each; rank0: rank 0
    alone), rank 0's file goes to everyone, every rank writes, loads and verifies it."""

    ops: list[dict[str, Any]]
    flashinfer_root: str  # <cache>/flashinfer
    tp: int
    moe: Any = None
    produce_timeout_s: float = 1800.0
    bf16_backends: tuple[str, ...] = BF16_BACKENDS
    fp8_backends: tuple[str, ...] = FP8_BACKENDS
    use_cuda: bool = True
    tuning: str = "sharded"
    tag: str = ""  # store-key prefix: several jobs in one world (the bench)

    def __call__(self, world: Any, rdv: Any, device: Any) -> dict[str, Any]:
        import torch

        from kernel_warmer.flashinfer.sharded import agree_mode

        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        mode, warning, gpus = agree_mode(world, rdv, self.tuning, gpu, rdv.timeout_s, tag=self.tag)
        if warning:
            print(f"kernel-warmer: WARNING: {warning}", flush=True)
        run = self._sharded if mode == "sharded" else self._rank0
        return {**run(world, rdv, device), "tuning": mode, "tuning_requested": self.tuning,
                "warnings": [warning] if warning else [], "gpus": gpus}

    def _load(self, path: Path) -> bool:
        from flashinfer.autotuner import AutoTuner

        return bool(AutoTuner.get().load_configs(str(path)))

    def _rank0(self, world: Any, rdv: Any, device: Any) -> dict[str, Any]:
        from kernel_warmer.dist.share import Payload, share_payload

        report: dict[str, Any] = {}
        root = Path(self.flashinfer_root)

        def produce() -> Payload:
            ops = [AutoTuneOp(**o) for o in self.ops]
            key = current_env_key()
            with tempfile.TemporaryDirectory(prefix="kw-fi-") as tmp:
                path = Path(tmp) / TUNE_FILE
                existing = root / key / TUNE_FILE
                if existing.is_file():  # start from the warm file: covered shapes are hits
                    path.write_bytes(existing.read_bytes())
                rep = tune_ops(ops, path, tp=self.tp, arch_moe=self.moe, device=device,
                               log=lambda s: print(s, flush=True), bf16_backends=self.bf16_backends,
                               fp8_backends=self.fp8_backends)
                report.update(tuned=rep.tuned, skipped=rep.skipped, tune_s=round(rep.seconds, 3),
                              warm_start=existing.is_file(), coverage=rep.coverage)
                data = path.read_bytes() if path.is_file() else b""
            if not data:
                raise RuntimeError("FlashInfer saved no tactics (every planned op was skipped)")
            return Payload(data, key)

        res = share_payload(world, rdv, produce, lambda key: root / key / TUNE_FILE, device=device,
                            local_key=current_env_key, loader=self._load,
                            produce_timeout_s=self.produce_timeout_s, tag=self.tag)
        return {**res.to_dict(), **report}

    def _sharded(self, world: Any, rdv: Any, device: Any) -> dict[str, Any]:
        from kernel_warmer.flashinfer.sharded import cover, share_sharded

        ops = [AutoTuneOp(**o) for o in self.ops]
        items = work_items(ops, backends_by_op(self.bf16_backends, self.fp8_backends), world.world_size)
        root = Path(self.flashinfer_root)
        key = current_env_key()
        log = lambda s: print(s, flush=True)  # noqa: E731

        def tune_share(mine: list, path: Path) -> tuple[list, list, float]:
            rep = tune_items(mine, path, arch_moe=self.moe, device=device, log=log)
            return rep.tuned, rep.skipped, rep.seconds

        seed = root / key / TUNE_FILE
        warm = seed.is_file()
        run = share_sharded(world, rdv, items, tune_share, env_key=key, dest_for=lambda k: root / k / TUNE_FILE,
                            device=device, finish=lambda doc, tuned: cover(doc, ops, tuned, self.tp), seed=seed,
                            loader=self._load, local_key=current_env_key,
                            produce_timeout_s=self.produce_timeout_s, tag=self.tag, log=log)
        doc = json.loads(Path(run.result.path).read_text())
        return {**run.result.to_dict(), "tuned": run.tuned, "skipped": run.skipped, "tune_s": run.tune_s,
                "warm_start": warm, "coverage": tactics.coverage_of(doc), "items": len(items),
                "shares": run.shares}


def torch_gpu() -> GpuFacts:
    """GPU 0 as torch sees it (where NVML could not be read before the run)."""
    import torch

    props = torch.cuda.get_device_properties(0)
    return GpuFacts(str(props.name), int(current_sm() or 0), int(props.total_memory), torch.cuda.device_count())


def gpu_plan(spec: Any, arch: Any, planned: Optional[FlashInferPlan], log: Callable[[str], None]) -> FlashInferPlan:
    """The plan resolved before the run (from NVML, the one the cache key holds), checked
    against the GPU torch sees; made here from torch where none was resolved."""
    sm = current_sm()
    if planned is not None and planned.sm == sm:
        return planned
    facts = versions.installed_vllm().facts
    if planned is not None:
        log(f"flashinfer: WARNING: NVML reported SM{planned.sm}, torch SM{sm}: planned again for torch's GPU")
    plan = plan_for_gpu(spec, arch, torch_gpu(), facts)
    assert plan is not None  # FlashInfer is enabled here
    return plan


def local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_phase(spec: Any, arch: Any, layout: CacheLayout, log: Callable[[str], None],
              planned: Optional[FlashInferPlan] = None) -> dict[str, Any]:
    """The ``kernel-warmer run`` entry: summary["flashinfer"] (JSON-able), never raises for
    a missing FlashInfer or an op the GPU cannot run; raises on rank disagreement/timeouts.
    ``planned``: the work resolved with the cache key (runner.resolve)."""
    t0 = time.monotonic()
    fi = spec.flashinfer
    if not fi.enabled:
        return {"status": "skipped: disabled in spec"}
    if not flashinfer_available():
        return {"status": "skipped: flashinfer not installed"}
    workspace = jit.ensure_workspace(layout.flashinfer_jit_dir)  # before any process imports FlashInfer
    jit.ensure_deepgemm_cache(layout.deepgemm_dir)
    gpus = local_gpu_count()
    if gpus == 0:
        return {"status": "skipped: no CUDA GPU visible (FlashInfer tunes on the GPU)"}
    plan = gpu_plan(spec, arch, planned, log)
    base = {"planned": len(plan.ops), "skipped_ops": [s.to_dict() for s in plan.skipped + plan.call_skips],
            "sm": plan.sm, "gpus_in_pod": gpus, "max_num_batched_tokens": plan.max_num_batched_tokens,
            "jit_calls": [c.to_dict() for c in plan.calls]}
    deadline = t0 + float(spec.timeout_seconds)
    if not plan.ops and plan.calls:
        return compile_only(list(plan.calls), plan.sm, workspace, layout, deadline - time.monotonic(), base, log)
    if not plan.ops:
        why = plan.skipped[0].reason if plan.skipped else "the model has no layer FlashInfer tunes"
        return {"status": f"skipped: vLLM calls no autotuned FlashInfer op here ({why})", **base}
    first, jit_report = _tune_everywhere(spec, arch, plan, workspace, layout, deadline, gpus, log)
    files = []
    if first.get("wrote"):
        files.append({"path": first["path"], "sha256": sha256_file(Path(first["path"]))})
    files += jit_files(workspace, layout, log)
    tuned = _tuned_summary(first, fi.tuning, jit_report)
    skipped = base["skipped_ops"] + tuned.pop("skipped_while_tuning")
    return {**base, **tuned, "skipped_ops": skipped, "seconds": round(time.monotonic() - t0, 3), "files": files}


def _tune_everywhere(spec: Any, arch: Any, plan: FlashInferPlan, workspace: Path, layout: CacheLayout,
                     deadline: float, gpus: int, log: Callable[[str], None]) -> tuple[dict[str, Any], jit.JitReport]:
    """Build the modules, then tune on every local GPU; rank 0's result and the JIT report."""
    from kernel_warmer.dist.workers import run_local_workers

    fi = spec.flashinfer
    job = AutotuneJob(ops=[o.to_dict() for o in plan.ops], flashinfer_root=str(layout.flashinfer_root),
                      tp=plan.world, moe=arch.moe, produce_timeout_s=float(spec.timeout_seconds),
                      bf16_backends=VLLM_BF16_BACKENDS, fp8_backends=VLLM_FP8_BACKENDS, tuning=fi.tuning)
    before = jit.library_state(workspace)
    jit_report = prepare_jit(list(plan.ops), plan.sm, workspace, deadline - time.monotonic(), log, plan.calls)
    log(f"flashinfer: {len(plan.ops)} op(s) to tune ({fi.tuning}), {gpus} local worker(s)")
    outcomes = run_local_workers(job, gpus, spec=spec.distributed,
                                 timeout_s=float(spec.distributed.timeout_seconds),
                                 # one deadline for the phase: what the JIT build left
                                 total_timeout_s=max(60.0, deadline - time.monotonic()),
                                 # a long cuDNN plan build can hold the GIL on rank 0 for a while
                                 stale_after_s=60.0)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        msgs = "; ".join(f"local rank {o.local_rank}: {o.error or f'exit {o.exitcode}'}" for o in failed)
        raise RuntimeError(f"flashinfer autotune broadcast failed: {msgs}")
    first = outcomes[0].result
    for warning in first.get("warnings") or []:
        log(f"flashinfer: WARNING: {warning}")
    jit_report.modules_built = jit.built_since(before, workspace)
    return first, jit_report


def _tuned_summary(first: dict[str, Any], requested: str, jit_report: jit.JitReport) -> dict[str, Any]:
    return {
        "status": "ok",
        "tuned": len(first.get("tuned", [])) if "tuned" in first else None,
        "tuned_ops": first.get("tuned"),
        "skipped_while_tuning": list(first.get("skipped") or []),
        "tune_seconds": first.get("tune_s"),
        "tuning": first.get("tuning"),
        "tuning_requested": requested,
        "warnings": first.get("warnings") or [],
        "shares": first.get("shares"),
        "jit": jit_report.to_dict(),
        # scalars: they survive the termination message's compaction (the CR status reads them)
        "jit_seconds": round(jit_report.seconds, 3),
        "jit_modules_built": len(jit_report.modules_built),
        "coverage": first.get("coverage"),
        "warm_start": first.get("warm_start"),
        "env_key": Path(first["path"]).parent.name,
        "sha256": first["sha256"],
        "bytes": first["size"],
        "ranks": [{"rank": r["rank"], "host": r.get("host"), "loaded": r.get("loaded"),
                   "sha256": r.get("sha_file")} for r in first["per_rank"]],
    }


def compile_only(calls: list[JitCall], sm: Any, workspace: Path, layout: CacheLayout, timeout_s: float,
                 base: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Nothing to tune, but kernels vLLM compiles on first use: build them on GPU 0 (every
    rank of a pod shares the volume, and the kernels do not depend on the rank)."""
    before = jit.library_state(workspace)
    report = prepare_jit([], sm, workspace, timeout_s, log, tuple(calls))
    report.modules_built = jit.built_since(before, workspace)
    files = jit_files(workspace, layout, log)
    return {**base, "status": "ok", "tuned": 0, "jit": report.to_dict(), "jit_seconds": round(report.seconds, 3),
            "jit_modules_built": len(report.modules_built), "files": files}


def prepare_jit(ops: list[AutoTuneOp], sm: Any, workspace: Path, timeout_s: float,
                log: Callable[[str], None], calls: tuple[JitCall, ...] = ()) -> jit.JitReport:
    """Size the build from the cgroup limits, then build the planned ops' and calls' modules
    (and the calls' DeepGEMM kernels) into the cache volume (no modules when FlashInfer
    ships prebuilt kernels here; the DeepGEMM kernels are compiled on first use either way)."""
    report = jit.JitReport(prebuilt=jit.prebuilt_packages())
    if report.prebuilt:
        log(f"flashinfer jit: prebuilt kernels from {report.prebuilt}: the warmer builds no module ahead of "
            "tuning (a module FlashInfer still builds while tuning is counted in modules_built)")
        if calls:
            report.seconds, report.kernels_compiled = jit.build_all([], calls, workspace, jit.deepgemm_dir(workspace),
                                                                    timeout_s, log)
        return report
    jobs = plan_jobs()
    os.environ.update(jobs.env())  # the build child and the tuning workers inherit it
    report.jobs = jobs.why
    log(f"flashinfer jit: workspace {workspace}; {jobs.why}")
    mods = jit.modules_for(ops, int(sm or 0), calls)
    if mods or calls:
        report.seconds, report.kernels_compiled = jit.build_all(mods, calls, workspace, jit.deepgemm_dir(workspace),
                                                                timeout_s, log)
    return report


def jit_files(workspace: Path, layout: CacheLayout, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The built modules for the manifest (so `check` reads a missing or damaged one as
    cold); a workspace outside the cache volume cannot be listed, and is said to be."""
    root = layout.root.resolve()
    libs = jit.module_libraries(workspace)
    if libs and root not in workspace.resolve().parents and workspace.resolve() != root:
        log(f"flashinfer jit: FLASHINFER_WORKSPACE_BASE={workspace} is outside the cache volume {root}: "
            "its modules are not in the manifest and the server rebuilds them unless it shares that folder")
        return []
    kernels = jit.deepgemm_kernels(jit.deepgemm_dir(workspace))
    kernels = [k for k in kernels if root in k.resolve().parents]
    return [{"path": str(p)} for p in libs + kernels]
