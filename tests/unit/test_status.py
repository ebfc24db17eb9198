"""Status from Pods' warmer termination messages, and the conditions derived from it."""

from __future__ import annotations

import json

import pytest

from kernel_warmer.report import TritonCounts, WarmupSummary
from warmup_operator.core import names
from warmup_operator.core.status import (
    StatusInputs,
    TargetState,
    compute_status,
    observe_pod,
    parse_summary,
    same_status,
)


def pod(message, exit_code=0, finished="2026-01-01T00:01:00Z", name="llm-7d9f-abcde"):
    return {
        "metadata": {"name": name, "namespace": "ns",
                     "annotations": {names.ANN_INJECTED_BY: "kw", names.ANN_HASH: "h1"},
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "llm-7d9f"}]},
        "status": {"initContainerStatuses": [
            {"name": names.BOOTSTRAP_CONTAINER, "state": {"terminated": {"exitCode": 0}}},
            {"name": names.WARMER_CONTAINER, "state": {"terminated": {
                "exitCode": exit_code, "finishedAt": finished, "message": message}}},
        ]},
    }


SUMMARY = json.loads(WarmupSummary(status="ok", seconds=41.5, triton=TritonCounts(compiled=3),
                                   flashinfer={"tuned": 4}).compact_json())


def test_observation_from_summary():
    obs = observe_pod(pod(json.dumps(SUMMARY)))
    assert obs.cr == "kw" and obs.hash == "h1" and obs.workload == "llm"
    assert obs.succeeded and obs.seconds == 41.5 and obs.summary["triton"]["compiled"] == 3


def test_crash_log_is_a_failure_and_its_text_is_not_kept():
    obs = observe_pod(pod("Traceback ...\nRuntimeError: boom", exit_code=1))
    assert obs.summary is None and not obs.succeeded and "boom" not in repr(obs)


def test_summary_that_reports_failure():
    obs = observe_pod(pod(WarmupSummary(status="failed", error="nvcc missing").compact_json()))
    assert not obs.succeeded


@pytest.mark.parametrize("message, exit_code, succeeded, seconds", [
    (WarmupSummary(status="ok", seconds=2.0).compact_json(), 0, True, 2.0),
    (WarmupSummary(status="skipped").compact_json(), 0, True, 0.0),
    (WarmupSummary(status="failed", seconds=1.0).compact_json(), 0, False, 1.0),  # failurePolicy Ignore
    (WarmupSummary(status="failed").compact_json(), 1, False, 0.0),  # failurePolicy Fail
    ('{"status": "ok", "seconds": "soon"}', 0, True, None),  # not the warmer's model: plain JSON
    ("Traceback ...", 0, True, None),  # no summary: the exit code decides
])
def test_outcome_and_seconds_from_the_summary_the_warmer_writes(message, exit_code, succeeded, seconds):
    obs = observe_pod(pod(message, exit_code=exit_code))
    assert (obs.succeeded, obs.seconds) == (succeeded, seconds)


def test_no_observation_before_the_warmer_finished():
    p = pod("")
    p["status"]["initContainerStatuses"][1]["state"] = {"running": {}}
    assert observe_pod(p) is None
    p["metadata"]["annotations"] = {}
    assert observe_pod(p) is None


def test_parse_summary_rejects_non_objects():
    assert parse_summary("[1,2]") is None and parse_summary("") is None and parse_summary("{bad") is None


def _status(targets, warmups=(), spec_error="", previous=None, now="2026-01-01T00:00:00Z"):
    return compute_status(StatusInputs(3, list(targets), list(warmups), spec_error), previous, now)


def conds(st):
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def test_conditions_table():
    ok = TargetState("Deployment", "a", True, "h", 2, 1)
    pending = TargetState("Deployment", "b", False)
    failed = TargetState("Deployment", "c", False, message="spec.servingContainer: no container named 'x'")
    good = observe_pod(pod(json.dumps(SUMMARY)))
    bad = observe_pod(pod("oops", exit_code=2, finished="2026-01-01T00:02:00Z", name="p2"))
    assert conds(_status([ok])) == {"Ready": ("True", "Injected"), "Degraded": ("False", "AsExpected")}
    assert conds(_status([])) == {"Ready": ("False", "NoTargets"), "Degraded": ("False", "AsExpected")}
    assert conds(_status([ok, pending]))["Ready"] == ("False", "Injecting")
    c = conds(_status([ok, failed]))
    assert c["Ready"] == ("False", "InjectionFailed") and c["Degraded"] == ("True", "InjectionFailed")
    assert conds(_status([ok], [good, bad]))["Degraded"] == ("True", "WarmupFailed")
    assert conds(_status([ok], spec_error="spec.cache: x"))["Degraded"] == ("True", "InvalidSpec")


def test_status_fields_and_transition_times():
    good = observe_pod(pod(json.dumps(SUMMARY)))
    st = _status([TargetState("Deployment", "a", True, "h", 2, 1)], [good])
    assert st["targetsInjected"] == "1/1" and st["observedGeneration"] == 3
    assert st["lastWarmup"]["display"] == "succeeded in 41.5s" and st["lastWarmup"]["summary"]["status"] == "ok"
    later = _status([TargetState("Deployment", "a", True, "h", 2, 2)], [good], previous=st, now="2026-01-02T00:00:00Z")
    assert [c["lastTransitionTime"] for c in later["conditions"]] == ["2026-01-01T00:00:00Z"] * 2
    assert not same_status(st, later)  # ready replicas changed
    assert same_status(later, _status([TargetState("Deployment", "a", True, "h", 2, 2)], [good], now="2030-01-01T00:00:00Z"))


def test_flashinfer_jit_time_is_reported_apart_from_tuning():
    """The status takes the split from the summary's scalar fields, which survive the
    compaction of a termination message that is over Kubernetes' limit."""
    fi = {"status": "ok", "jit_seconds": 801.2, "jit_modules_built": 1, "tune_seconds": 35.5,
          "jit": {"modules_built": ["fused_moe_90"]}, "tuned_ops": [{"op": "x" * 200}] * 40}
    message = WarmupSummary(status="ok", seconds=840.0, flashinfer=fi).compact_json()
    assert len(message) <= 4096 and "tuned_ops" not in message  # compacted
    st = _status([TargetState("Deployment", "a", True, "h", 1, 1)], [observe_pod(pod(message))])
    assert st["lastWarmup"]["flashinfer"] == {"jitSeconds": 801.2, "jitModulesBuilt": 1, "tuneSeconds": 35.5}
    assert "flashinfer" not in _status([TargetState("Deployment", "a", True, "h", 1, 1)],
                                       [observe_pod(pod(json.dumps(SUMMARY)))])["lastWarmup"]
