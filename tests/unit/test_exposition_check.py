"""The project's exposition-format check (tests/support/exposition.py) finds what it claims to."""

from __future__ import annotations

import pytest
from exposition import convention_problems, parse

GOOD = """# HELP kernel_warmup_injections_total Pod-template changes
# TYPE kernel_warmup_injections_total counter
kernel_warmup_injections_total{kind="Deployment",action="inject"} 3.0
# HELP kernel_warmup_warmup_seconds Whole runs
# TYPE kernel_warmup_warmup_seconds histogram
kernel_warmup_warmup_seconds_bucket{outcome="ok",le="1.0"} 1.0
kernel_warmup_warmup_seconds_bucket{outcome="ok",le="+Inf"} 2.0
kernel_warmup_warmup_seconds_count{outcome="ok"} 2.0
kernel_warmup_warmup_seconds_sum{outcome="ok"} 7.5
# HELP kernel_warmup_leader 1 while leading
# TYPE kernel_warmup_leader gauge
kernel_warmup_leader 1.0
# HELP odd_label a label value with escapes
# TYPE odd_label gauge
odd_label{v="a\\"b\\\\c\\nd"} NaN
"""


def test_a_valid_exposition_has_no_problems():
    families, problems = parse(GOOD)
    assert problems == [] and convention_problems(families) == []
    assert families["odd_label"].samples[0][1] == {"v": 'a"b\\c\nd'}
    assert len(families["kernel_warmup_warmup_seconds"].samples) == 4


@pytest.mark.parametrize("text, problem", [
    ("kernel_warmup_x 1\n", "before any # TYPE"),
    ("# TYPE a gauge\n# HELP a h\na{b=\"1\"} one\n", "bad value"),
    ("# TYPE a gauge\n# HELP a h\na{b=1} 1\n", "bad label"),
    ("# TYPE a gauge\n# HELP a h\na{b=\"1} 1\n", "unterminated"),
    ("# TYPE a gauge\n# HELP a h\na 1\na 2\n", "duplicate series"),
    ("# TYPE a gauge\na 1\n", "no HELP"),
    ("# TYPE a gauge\n# HELP a h\na 1\n# TYPE b gauge\n# HELP b h\nb 1\na{x=\"1\"} 1\n", "not contiguous"),
    ("# TYPE a gauge\n# TYPE a counter\n# HELP a h\n", "twice"),
    ("# TYPE a meter\n# HELP a h\n", "unknown type"),
    ("# TYPE h histogram\n# HELP h x\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n",
     "not cumulative"),
    ("# TYPE h histogram\n# HELP h x\nh_bucket{le=\"1\"} 1\nh_count 1\nh_sum 1\n", "no +Inf"),
    ("# TYPE h histogram\n# HELP h x\nh_bucket{le=\"+Inf\"} 2\nh_count 1\nh_sum 1\n", "_count"),
])
def test_each_syntax_problem_is_found(text, problem):
    _, problems = parse(text)
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize("text, problem", [
    ("# TYPE kernel_warmup_runs counter\n# HELP kernel_warmup_runs h\nkernel_warmup_runs 1\n", "ends in _total"),
    ("# TYPE kernel_warmup_up_total gauge\n# HELP kernel_warmup_up_total h\nkernel_warmup_up_total 1\n",
     "only counters"),
    ("# TYPE kernel_warmup_latency_ms gauge\n# HELP kernel_warmup_latency_ms h\nkernel_warmup_latency_ms 1\n",
     "in seconds"),
    ("# TYPE kernel_warmup_x_total counter\n# HELP kernel_warmup_x_total h\nkernel_warmup_x_total{pod=\"p-1\"} 1\n",
     "grow without bound"),
])
def test_each_naming_problem_is_found(text, problem):
    families, problems = parse(text)
    assert problems == []
    assert any(problem in p for p in convention_problems(families)), convention_problems(families)
