"""What of a Pod's summary reaches the KernelWarmup (issue 11, item 4): typed, bounded fields
only, never text; the status is replaced, not merged; a workload that cannot create Pods is
reported (item 9)."""

from __future__ import annotations

import json

import pytest

from warmup_operator.core.status import (
    StatusInputs,
    TargetState,
    WarmupObservation,
    compute_status,
    replica_failure,
    status_patch,
    structured_summary,
)

pytestmark = pytest.mark.reliability
SECRET = "hf_secret_0123456789abcdef"


def hostile() -> dict:
    return {"status": "failed", "seconds": 2.0, "cacheKey": f"key {SECRET}", "error": f"exfil: HF_TOKEN={SECRET}",
            "text": SECRET, "triton": {"compiled": SECRET, "hit": 10**12, "skipped": -5, "failed": True},
            "flashinfer": {"status": f"ok {SECRET}", "error": SECRET}, "details": {"x": SECRET}, SECRET: 1}


def test_no_text_from_the_pod_survives():
    out = structured_summary(hostile())
    assert SECRET not in json.dumps(out)
    assert out == {"status": "failed", "seconds": 2.0, "failureReason": "WarmupFailed", "flashinfer": "ok",
                   "triton": {"compiled": 0, "hit": 10**6, "skipped": 0, "failed": 0}}


@pytest.mark.parametrize("error, reason", [
    ("timeoutSeconds (30s) reached after 30s", "Timeout"),
    ("cache volume /c is full (ENOSPC /c/x)", "CacheVolumeFull"),
    ("config field 'num_attention_heads': must be > 0", "ModelConfigInvalid"),
    (None, "WarmupFailed"), (12, "WarmupFailed"),
])
def test_failure_reason_is_one_of_a_fixed_set(error, reason):
    assert structured_summary({"status": "failed", "error": error})["failureReason"] == reason


def test_odd_values_are_bounded_or_dropped():
    out = structured_summary({"status": "weird", "seconds": float("nan"), "cacheKey": "A" * 65, "triton": [1]})
    assert out["status"] == "failed" and "seconds" not in out and "cacheKey" not in out
    assert structured_summary({"status": "ok", "seconds": 1e300, "cacheKey": "ab12"})["seconds"] == 1e7


def test_status_carries_the_structured_summary_and_no_text_in_conditions():
    obs = WarmupObservation("ns", "llm-1", "kw", "h", "llm", "2026-01-01T00:00:00Z", 1, summary=hostile())
    st = compute_status(StatusInputs(1, [TargetState("Deployment", "llm", True, "h")], [obs]), None, "t")
    assert SECRET not in json.dumps(st)
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "WarmupFailed" and "kubectl logs llm-1 -c kernel-warmup-warmer" in degraded["message"]


def test_status_patch_replaces_instead_of_merging():
    old = {"lastWarmup": {"pod": "a", "summary": {"status": "failed", "failureReason": "Timeout"}}, "x": 1}
    new = {"lastWarmup": {"pod": "b", "summary": {"status": "ok"}}}
    assert status_patch(old, new) == {"lastWarmup": {"pod": "b", "summary": {"status": "ok", "failureReason": None}},
                                      "x": None}
    assert status_patch(None, new) == new


def test_replica_failure_is_reported():
    st = {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                          "message": 'pods "x" is forbidden: violates PodSecurity "baseline"'}]}
    msg, reason = replica_failure(st)
    assert reason == "FailedCreate" and "PodSecurity" in msg
    assert replica_failure({"conditions": [{"type": "Available", "status": "True"}]}) == ("", "")
    t = TargetState("Deployment", "llm", True, "h", message=msg, reason=reason)
    conds = {c["type"]: c for c in compute_status(StatusInputs(1, [t]), None, "t")["conditions"]}
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "FailedCreate"


def test_the_vllm_release_and_a_warning_count_reach_the_status_never_the_words():
    out = structured_summary({"status": "ok", "versions": {"vllm": "0.34.0+cu130"},
                              "warnings": [f"vLLM 0.35.0 is not a release this warmer knows {SECRET}"] * 3})
    assert out["vllmVersion"] == "0.34.0+cu130" and out["warnings"] == 3 and SECRET not in json.dumps(out)
    for bad in (f"0.34 {SECRET}", "x" * 40, 34, None):
        assert "vllmVersion" not in structured_summary({"status": "ok", "versions": {"vllm": bad}})
    assert "warnings" not in structured_summary({"status": "ok", "warnings": []})
