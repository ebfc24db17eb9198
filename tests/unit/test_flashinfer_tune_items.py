"""tune.tune_items with a fake `flashinfer`: a whole unit is one call at M = m_max with the
op's own buckets (as rank 0 tunes it), a bucket range one call inside
``autotune(tuning_buckets=range)`` at its largest M (issue 15)."""

from __future__ import annotations

import contextlib
import sys
import types
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from kernel_warmer.flashinfer import tune  # noqa: E402
from kernel_warmer.plan.flashinfer import MOE_OP, AutoTuneOp  # noqa: E402
from kernel_warmer.plan.shard import work_items  # noqa: E402


class FakeFlashInfer:
    """Records each GEMM/MoE call with the tuning buckets in force at that moment."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, ...] | None] = []
        self.calls: list[tuple[str, str, int, tuple[int, ...] | None]] = []

    def buckets(self) -> tuple[int, ...] | None:
        return next((b for b in reversed(self.stack) if b is not None), None)

    @contextlib.contextmanager
    def autotune(self, tune_mode=True, cache=None, tuning_buckets=None):
        self.stack.append(tuple(tuning_buckets) if tuning_buckets is not None else None)
        try:
            yield
        finally:
            self.stack.pop()

    def mm_bf16(self, a, b, backend):
        self.calls.append(("bf16_gemm", backend, a.shape[0], self.buckets()))

    def cutlass_fused_moe(self, x, *args, **kwargs):
        self.calls.append((MOE_OP, "moe", x.shape[0], self.buckets()))

    def install(self, monkeypatch) -> None:
        pkg = types.ModuleType("flashinfer")
        pkg.mm_bf16, pkg.cutlass_fused_moe = self.mm_bf16, self.cutlass_fused_moe
        autotuner = types.ModuleType("flashinfer.autotuner")
        autotuner.autotune = self.autotune
        pkg.autotuner = autotuner
        monkeypatch.setitem(sys.modules, "flashinfer", pkg)
        monkeypatch.setitem(sys.modules, "flashinfer.autotuner", autotuner)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)


def test_whole_units_run_as_rank0_and_ranges_inside_their_buckets(monkeypatch, tmp_path):
    fake = FakeFlashInfer()
    fake.install(monkeypatch)
    gemm = AutoTuneOp("bf16_gemm", 32, 16, 64, "o")
    moe = AutoTuneOp(MOE_OP, 8, 16, 64, "experts", mode="bf16", tp_size=2, local_experts=2)
    items = work_items([gemm, moe], {"bf16_gemm": ("cudnn", "cublaslt")}, world_size=4)
    arch_moe = SimpleNamespace(num_experts=4, experts_per_token=2)
    report = tune.tune_items(items, tmp_path / "autotune.json", arch_moe=arch_moe, device=torch.device("cpu"),
                             log=lambda s: None)
    assert report.skipped == []
    assert fake.calls == [
        ("bf16_gemm", "cudnn", 8, None),  # settle_workspace's small cuDNN GEMM
        ("bf16_gemm", "cudnn", 64, None), ("bf16_gemm", "cublaslt", 64, None),
        (MOE_OP, "moe", 4, (1, 2, 4)), (MOE_OP, "moe", 64, (8, 16, 32, 64))]
    assert [t["buckets"] for t in report.tuned] == [[1, 2, 4, 8, 16, 32, 64]] * 2 + [[1, 2, 4], [8, 16, 32, 64]]
