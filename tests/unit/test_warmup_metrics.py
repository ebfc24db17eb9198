"""A finished warmup as metric samples, and bounded label values (core/warmup_metrics.py)."""

from __future__ import annotations

import pytest

from kernel_warmer.report import TritonCounts, WarmupSummary
from warmup_operator.core.status import WarmupObservation, parse_summary
from warmup_operator.core.warmup_metrics import OTHER, LabelBudget, model_label, sample


def obs(summary: WarmupSummary | None, exit_code: int = 0, node: str = "gpu-1") -> WarmupObservation:
    return WarmupObservation(namespace="ml", pod="p", cr="kw", hash="h", workload="w", finished_at="t",
                             exit_code=exit_code, summary=parse_summary(summary.compact_json()) if summary else None,
                             node=node)


def test_a_cold_run_reports_its_phases_cache_and_variants():
    s = WarmupSummary(status="ok", seconds=42.0, triton=TritonCounts(compiled=3, hit=1), cache="cold",
                      phases={"check": 0.2, "triton_compile": 30.0, "flashinfer_jit": 5.0, "flashinfer_tune": 6.5})
    got = sample(obs(s), "llama")
    assert (got.outcome, got.kernelwarmup, got.model, got.node) == ("succeeded", "ml/kw", "llama", "gpu-1")
    assert got.seconds == 42.0 and got.cache == "cold" and (got.compiled, got.hit) == (3, 1)
    assert got.phases == {"check": 0.2, "triton_compile": 30.0, "flashinfer_jit": 5.0, "flashinfer_tune": 6.5}
    assert got.reason == ""


def test_a_failed_run_has_a_bounded_reason_not_its_text():
    s = WarmupSummary(status="failed", error="cache volume /c is full (ENOSPC x); token=s3cret", seconds=1.0)
    got = sample(obs(s, exit_code=1), "m")
    assert got.outcome == "failed" and got.reason == "CacheVolumeFull"


def test_a_crash_log_instead_of_a_summary_still_counts():
    got = sample(obs(None, exit_code=137, node=""), "m")
    assert got.outcome == "failed" and got.seconds is None and got.phases == {} and got.node == "unknown"
    assert got.reason == "WarmupFailed"


@pytest.mark.parametrize("spec, want", [
    ({"model": {"configPath": "/models/Meta-Llama-3.1-8B-Instruct/config.json"}}, "Meta-Llama-3.1-8B-Instruct"),
    ({"model": {"configPath": "/models/qwen.json"}}, "qwen.json"),
    ({"model": {"layers": [{"numHeads": 8}]}}, "layers"),
    ({"model": "x"}, "unknown"),
    (None, "unknown"),
])
def test_model_label(spec, want):
    assert model_label(spec) == want


def test_each_label_has_a_budget_of_values():
    budget = LabelBudget(limits={"node": 2}, combinations=100)
    assert budget(node="a", result="warm") == {"node": "a", "result": "warm"}
    assert budget(node="b", result="warm")["node"] == "b"
    assert budget(node="c", result="warm") == {"node": OTHER, "result": "warm"}
    assert budget(node="a", result="cold")["node"] == "a"  # known values stay


def test_a_family_has_a_budget_of_combinations():
    budget = LabelBudget(limits={"kernelwarmup": 100, "node": 100}, combinations=3)
    seen = {tuple(sorted(budget(kernelwarmup=f"k{i}", node=f"n{i}").items())) for i in range(50)}
    assert len(seen) == 4  # three real combinations, then everything reads "other"
    assert (("kernelwarmup", OTHER), ("node", OTHER)) in seen


def test_long_values_are_cut():
    assert len(LabelBudget()(node="n" * 1000)["node"]) == 128
