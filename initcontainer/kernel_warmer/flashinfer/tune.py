"""The FlashInfer phase: tune the planned ops on rank 0, give every rank the same file.

Rank 0 runs each planned op once at M = m_max inside
``flashinfer.autotuner.autotune(tune_mode=True, cache=PATH)``: ``choose_one`` then profiles
every M bucket up to m_max (``get_hybrid_num_tokens_buckets``) and the context saves the
winners to PATH on exit. The file's bytes go through ``kernel_warmer.dist.share.share_payload``, which
writes them to ``<cache>/flashinfer/<env-key>/autotune.json`` and proves every rank loaded
the same bytes (``AutoTuner.load_configs`` returned True everywhere).

``env-key`` is derived from FlashInfer's own ``_collect_metadata()`` (flashinfer, CUDA,
cuBLAS, cuDNN, cudnn-frontend versions and the GPU name): the very fields FlashInfer checks
before honouring a file, so two environments never share a folder.

Things found in FlashInfer 0.6.18's source that shape this module:
- the file key holds the runner class, so a tactic tuned for backend "cudnn" is no hit
  for "cublaslt": each GEMM is tuned once per backend the server may pick;
- up to FlashInfer 0.7.1 the fused-MoE key holds ``tp_rank``/``ep_rank``: rank 0 tunes the
  experts for one rank key and ``cover_ranks`` writes the entries under every rank's key
  (tactics.py), or the other ranks would miss every MoE shape; from 0.7.2 one key serves
  every rank (``kernel_warmer.versions`` holds both formats);
- mm_bf16's "auto" backend needs nvidia-cutlass-dsl, so the backends are named."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from kernel_warmer.files import atomic_write_bytes
from kernel_warmer import versions
from kernel_warmer.flashinfer import tactics
from kernel_warmer.heartbeat import Heartbeat
from kernel_warmer.plan.flashinfer import MOE_OP, AutoTuneOp
from kernel_warmer.plan.shard import WorkItem
from kernel_warmer.versions import MoeKeyFormat

TUNE_FILE = "autotune.json"
BF16_BACKENDS = ("cudnn", "cublaslt")
# The backend vLLM passes on SM100 (vllm/utils/flashinfer.py:31-47 mm_bf16 "cute-dsl";
# :1145-1172 bmm_fp8 "auto"): a tactic is keyed by the runner, so tune that one alone.
VLLM_BF16_BACKENDS = ("cute-dsl",)
VLLM_FP8_BACKENDS = ("auto",)
FP8_BACKENDS = ("cublas", "cudnn")
FP4_BACKENDS = ("cudnn", "cutlass")
METADATA_FIELDS = ("flashinfer_version", "cuda_version", "cublas_version", "cudnn_version",
                   "cudnn_frontend_version", "gpu")


def env_key(meta: dict[str, Any]) -> str:
    """Folder name for one FlashInfer environment: readable prefix + hash of every field."""
    canon = json.dumps({k: str(meta.get(k, "unknown")) for k in METADATA_FIELDS}, sort_keys=True)
    digest = hashlib.sha256(canon.encode()).hexdigest()[:16]
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", str(meta.get("gpu", "unknown"))).strip("-").lower()
    return f"fi{meta.get('flashinfer_version', 'unknown')}-{gpu}-{digest}"


def flashinfer_available() -> bool:
    return importlib.util.find_spec("flashinfer") is not None


def current_env_key() -> str:
    from flashinfer.autotuner import _collect_metadata

    return env_key(_collect_metadata())


def current_sm() -> Optional[int]:
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


# --- running one op so that FlashInfer's choose_one profiles it ------------------------


def _run_gemm(op: AutoTuneOp, backend: str, device: Any) -> None:
    import flashinfer
    import torch

    m, n, k = op.m_max, op.n, op.k
    if op.op == "bf16_gemm":
        a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, k, device=device, dtype=torch.bfloat16).t()  # (k, n), column-major
        flashinfer.mm_bf16(a, b, backend=backend)
    elif op.op == "fp8_gemm":
        a = torch.randn(1, m, k, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(1, n, k, device=device).to(torch.float8_e4m3fn).transpose(-2, -1)
        one = torch.tensor(1.0, device=device)
        flashinfer.bmm_fp8(a, b, one, one, torch.bfloat16, backend=backend)
    elif op.op == "fp4_gemm":
        gs = torch.tensor(1.0, device=device)
        a, a_sf = flashinfer.fp4_quantize(torch.randn(m, k, device=device, dtype=torch.bfloat16), gs)
        b, b_sf = flashinfer.fp4_quantize(torch.randn(n, k, device=device, dtype=torch.bfloat16), gs)
        flashinfer.mm_fp4(a, b.t(), a_sf, b_sf.t(), gs, torch.bfloat16, backend=backend)
    else:
        raise ValueError(f"unknown GEMM op {op.op}")


def _run_moe(op: AutoTuneOp, arch_moe: Any, tp_rank: int, ep_rank: int, device: Any,
             m: Optional[int] = None) -> None:
    """One cutlass_fused_moe call as vLLM's FlashInferExperts makes it
    (vllm/model_executor/layers/fused_moe/experts/flashinfer_cutlass_moe.py:365-389): this
    rank's local experts, the tp/ep sizes and ranks vLLM passes, and per mode the input and
    scales vLLM passes (bf16; fp8 per-tensor: fp8 input, four scales; fp8 block-scale: bf16
    input, [w1_scale, w2_scale], use_deepseek_fp8_block_scale). ``m`` rows (default m_max);
    ``tune_max_num_tokens`` is always m_max, the server's value, which shapes the buckets."""
    import torch

    import flashinfer

    m, hidden, n2 = m or op.m_max, op.k, op.n
    experts, topk = op.local_experts or arch_moe.num_experts, arch_moe.experts_per_token
    x = torch.randn(m, hidden, device=device, dtype=torch.bfloat16)
    ids = torch.randint(0, arch_moe.num_experts, (m, topk), device=device, dtype=torch.int32)
    scales = torch.softmax(torch.randn(m, topk, device=device), dim=-1)
    fc1 = torch.randn(experts, n2, hidden, device=device, dtype=torch.bfloat16) * 0.02
    fc2 = torch.randn(experts, hidden, n2 // 2, device=device, dtype=torch.bfloat16) * 0.02
    extra: dict[str, Any] = {}
    quant_scales: list = []
    if op.mode == "fp8_tensor":
        x, fc1, fc2 = (t.to(torch.float8_e4m3fn) for t in (x, fc1, fc2))
        ones_e, one = torch.ones(experts, device=device), torch.ones(1, device=device)
        quant_scales = [ones_e, one, ones_e, one]
    elif op.mode == "fp8_block":
        fc1, fc2 = fc1.to(torch.float8_e4m3fn), fc2.to(torch.float8_e4m3fn)
        quant_scales = [torch.ones(experts, n2 // 128, hidden // 128, device=device),
                        torch.ones(experts, hidden // 128, n2 // 2 // 128, device=device)]
        extra["use_deepseek_fp8_block_scale"] = True
    elif op.mode not in ("bf16", ""):
        raise ValueError(f"fused MoE tuning for mode {op.mode!r} is not implemented")
    flashinfer.cutlass_fused_moe(x, ids, scales, fc1, fc2, torch.bfloat16, quant_scales,
                                 tp_size=op.tp_size, tp_rank=tp_rank, ep_size=op.ep_size, ep_rank=ep_rank,
                                 tune_max_num_tokens=op.m_max, **extra)


@dataclass
class TuneReport:
    tuned: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    coverage: dict[str, Any] = field(default_factory=dict)


def settle_workspace(device: Any, log: Callable[[str], None] = print) -> None:
    """Bring FlashInfer's shared GEMM workspace to its steady size before tuning.

    FlashInfer 0.6.18 keys a tactic by the shapes of all GEMM inputs, its shared
    workspace buffer included, and that buffer grows (32 MiB -> 32 MiB + 256 B, seen on
    H200) at the first cuDNN GEMM of a process. Tuned before the growth, the first op's
    entries carried the small size and a serving process (whose start-up dummy run has
    grown it) missed them. One small unplanned GEMM here puts every entry at the size a
    serving process looks up with.
    """
    import flashinfer
    import torch

    try:
        a = torch.randn(8, 256, device=device, dtype=torch.bfloat16)
        b = torch.randn(256, 256, device=device, dtype=torch.bfloat16).t()
        flashinfer.mm_bf16(a, b, backend="cudnn")
        torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - no cuDNN GEMM here: nothing to settle
        log(f"flashinfer: workspace not settled ({type(exc).__name__}: {exc})")


def _variants(op: AutoTuneOp, backends: dict[str, tuple[str, ...]], arch_moe: Any,
              device: Any) -> list[tuple[str, Callable[[], None]]]:
    """What to run for one op: each backend of a GEMM; for the fused MoE one rank key only,
    since every rank calls it with the same shapes (``cover_ranks`` writes the others)."""
    if op.op == MOE_OP:
        t, e = op.rank_keys()[0]
        label = f"tp_rank={t} ep_rank={e}, written for {len(op.rank_keys())} rank(s)"
        return [(label, lambda: _run_moe(op, arch_moe, t, e, device))]
    return [(f"backend={b}", lambda b=b: _run_gemm(op, b, device)) for b in backends[op.op]]


def _tune_one(label: str, fn: Callable[[], None], op: AutoTuneOp, report: TuneReport, device: Any,
              log: Callable[[str], None], item: Optional[WorkItem] = None) -> None:
    """Run ``fn`` (choose_one profiles), record it as tuned with its seconds, or as skipped
    with why; a sharded ``item`` adds its M buckets to the record."""
    import torch

    where = {} if item is None else {"buckets": list(item.buckets)}
    m = f"M<={op.m_max}" if item is None else item.m_label()
    start = time.monotonic()
    try:
        fn()
        torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - the GPU cannot run it: skip, with why
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(device)
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
        reason = f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        report.skipped.append({**op.to_dict(), **where, "reason": reason})
        log(f"flashinfer: skip {op.op} n={op.n} k={op.k} {m} {reason}")
        return
    secs = time.monotonic() - start
    report.tuned.append({**op.to_dict(), **where, "variant": label, "seconds": round(secs, 3)})
    log(f"flashinfer: tuned {op.op} n={op.n} k={op.k} {m} {label} in {secs:.1f}s")


def cover_ranks(path: Path, ops: list[AutoTuneOp], tuned: list[dict[str, Any]], tp: int,
                fmt: Optional[MoeKeyFormat] = None) -> dict[str, Any]:
    """Rewrite the saved file so every rank of the world finds its fused-MoE entries, with
    the covered world recorded inside it; returns that record. Raises when a rank would
    still miss (the file would be partial). ``fmt``: the key format (default: the
    installed FlashInfer's)."""
    fmt = fmt or versions.installed_flashinfer().facts.moe_key
    doc = json.loads(path.read_text()) if path.is_file() else {}
    moe_tuned = {(t["n"], t["k"], t.get("mode")) for t in tuned if t["op"] == MOE_OP}
    world = tp
    entries = []
    for op in ops:
        if op.op != MOE_OP or (op.n, op.k, op.mode) not in moe_tuned:
            continue
        keys = op.rank_keys()
        tactics.copy_to_ranks(doc, op.tp_size, op.ep_size, keys[0], keys, fmt)
        missing = tactics.missing_moe_keys(doc, op.tp_size, op.ep_size, keys, fmt)
        if missing:
            raise RuntimeError(f"fused MoE n={op.n} k={op.k}: the tactic file has no entry for (tp_rank, ep_rank) "
                               f"{missing} after tuning {keys[0]} ({fmt.name}); FlashInfer's key format may have "
                               "changed")
        world = op.tp_size * op.ep_size
        entries.append({"op": op.op, "n": op.n, "k": op.k, "mode": op.mode, "tuned_rank_key": list(keys[0]),
                        "rank_keys": [list(k) for k in keys], "key_format": fmt.name})
    coverage = {"world_size": world, "worker_ranks": list(range(world)),
                "rank_keys": entries[0]["rank_keys"] if entries else [], "moe": entries,
                "ops": sorted({t["op"] for t in tuned})}
    if doc:
        atomic_write_bytes(path, json.dumps(tactics.with_coverage(doc, coverage), indent=2).encode())
    return coverage


def backends_by_op(bf16_backends: tuple[str, ...] = BF16_BACKENDS,
                   fp8_backends: tuple[str, ...] = FP8_BACKENDS) -> dict[str, tuple[str, ...]]:
    return {"bf16_gemm": bf16_backends, "fp8_gemm": fp8_backends, "fp4_gemm": FP4_BACKENDS}


def tune_ops(ops: list[AutoTuneOp], cache_path: Path, *, tp: int, arch_moe: Any,
             device: Any, log: Callable[[str], None] = print,
             bf16_backends: tuple[str, ...] = BF16_BACKENDS,
             fp8_backends: tuple[str, ...] = FP8_BACKENDS) -> TuneReport:
    """Profile every op (each GEMM backend; the fused MoE once for all ranks) into
    ``cache_path``, then write every rank's MoE keys and the covered world into it."""
    from flashinfer.autotuner import autotune

    backends = backends_by_op(bf16_backends, fp8_backends)
    report = TuneReport()
    t0 = time.monotonic()
    settle_workspace(device, log)
    with Heartbeat(log, "flashinfer tune") as beat, autotune(tune_mode=True, cache=str(cache_path)):
        for op in ops:
            for label, fn in _variants(op, backends, arch_moe, device):
                beat.update(f"{op.op} n={op.n} k={op.k} M<={op.m_max} {label}")
                _tune_one(label, fn, op, report, device, log)
    report.coverage = cover_ranks(cache_path, ops, report.tuned, tp)
    report.seconds = time.monotonic() - t0
    return report


def _item_fn(item: WorkItem, arch_moe: Any, device: Any) -> tuple[str, Callable[[], None]]:
    """The call for one item, at M = its largest bucket (m_max for a whole unit)."""
    op, m = item.op, item.buckets[-1]
    if op.op == MOE_OP:
        t, e = op.rank_keys()[0]
        return (f"tp_rank={t} ep_rank={e}, written for {len(op.rank_keys())} rank(s)",
                lambda: _run_moe(op, arch_moe, t, e, device, m=m))
    return f"backend={item.variant}", lambda: _run_gemm(dataclasses.replace(op, m_max=m), item.variant, device)


def _bucket_scope(item: WorkItem) -> contextlib.AbstractContextManager:
    """A whole unit runs as rank 0 runs it (the op's own buckets up to m_max); a bucket
    range inside ``autotune(tuning_buckets=range)``, which profiles exactly those."""
    if item.whole:
        return contextlib.nullcontext()
    from flashinfer.autotuner import autotune

    return autotune(tune_mode=True, tuning_buckets=item.buckets)


def tune_items(items: list[WorkItem], cache_path: Path, *, arch_moe: Any, device: Any,
               log: Callable[[str], None] = print) -> TuneReport:
    """Profile this rank's share: each item is one call, over all its op's buckets by
    default, or over a range of them where the plan cut an additive unit (plan/shard.py).
    The fused MoE is tuned for its first rank key; rank 0 covers the others after the merge."""
    from flashinfer.autotuner import autotune

    report = TuneReport()
    t0 = time.monotonic()
    settle_workspace(device, log)  # every rank: the workspace size is part of every GEMM key
    with Heartbeat(log, "flashinfer tune (share)") as beat, autotune(tune_mode=True, cache=str(cache_path)):
        for item in items:
            beat.update(item.label())
            label, fn = _item_fn(item, arch_moe, device)
            with _bucket_scope(item):
                _tune_one(label, fn, item.op, report, device, log, item)
    report.seconds = time.monotonic() - t0
    return report
