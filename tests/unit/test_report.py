"""The summary contract: full JSON round-trips; the termination-message form fits 4096 bytes."""

from __future__ import annotations

import json
from pathlib import Path

from kernel_warmer.report import TERMINATION_LIMIT, TritonCounts, WarmupSummary


def test_round_trip_through_json():
    s = WarmupSummary(status="ok", seconds=12.3456, cache_key="abc", triton=TritonCounts(3, 1, 2, 0),
                      flashinfer={"status": "ok", "tuned": 4})
    back = WarmupSummary.from_json(s.to_json())
    assert back.status == "ok" and back.cache_key == "abc" and back.triton == TritonCounts(3, 1, 2, 0)
    assert back.flashinfer == {"status": "ok", "tuned": 4} and back.seconds == 12.346
    assert "cacheKey" in json.loads(s.to_json())


def test_compact_json_fits_even_with_huge_detail_and_error():
    s = WarmupSummary(
        status="failed", cache_key="k" * 32, error="E" * 10000,
        flashinfer={"status": "failed: " + "x" * 5000, "tuned_ops": [{"op": "bf16_gemm", "n": i} for i in range(500)],
                    "files": [{"path": f"/c/{i}", "sha256": "0" * 64} for i in range(100)], "seconds": 3.5},
        details={"variants": [{"variant": "v" * 100}] * 200},
    )
    text = s.compact_json()
    assert len(text.encode()) <= TERMINATION_LIMIT
    back = WarmupSummary.from_json(text)
    assert back.status == "failed" and back.cache_key == "k" * 32
    assert back.error.startswith("EEE") and back.error.endswith("[cut]")
    assert back.details == {}  # details are the first thing dropped


def test_compact_keeps_scalar_flashinfer_fields_when_they_fit():
    s = WarmupSummary(flashinfer={"status": "ok", "tuned": 3, "files": [{"path": "p" * 5000}]})
    back = WarmupSummary.from_json(s.compact_json())
    assert back.flashinfer == {"status": "ok", "tuned": 3}


def test_report_module_is_stdlib_only():
    import subprocess
    import sys

    code = ("import sys, kernel_warmer.report as r; "
            "bad=[m for m in ('torch','triton','yaml','kubernetes') if m in sys.modules]; print(bad)")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(root / "initcontainer"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


def test_phases_and_cache_state_survive_the_termination_message():
    s = WarmupSummary(status="ok", seconds=9.0, cache="cold", phases={"check": 0.1234, "triton_compile": 8.0},
                      details={"variants": [{"variant": "v" * 100}] * 200})
    back = WarmupSummary.from_json(s.compact_json())
    assert back.cache == "cold" and back.phases == {"check": 0.123, "triton_compile": 8.0}


def test_unknown_phases_and_bad_numbers_are_dropped():
    text = json.dumps({"status": "ok", "phases": {"check": 1, "mine": 2, "triton_compile": -1,
                                                  "flashinfer_tune": True}, "cache": "lukewarm"})
    back = WarmupSummary.from_json(text)
    assert back.phases == {"check": 1.0} and back.cache == ""
