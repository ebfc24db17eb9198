"""Complete injection cases: a user's pod template and a KernelWarmup spec in, the injected
template out (``tests/golden/inject/<case>/``), plus the invariants every case keeps: the
user's view of the result is the input (reversible) and re-injecting changes nothing
(idempotent). ``KW_REGENERATE_GOLDEN=1`` rewrites the expected files after a deliberate
change; review their diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.golden import assert_golden
from support.ssa import apply_fragment

from warmup_operator.core.inject import build_injection
from warmup_operator.core.kernelwarmup import parse_spec
from warmup_operator.core.uninject import user_view

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "inject"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


def load(case: str, name: str) -> dict:
    return json.loads((GOLDEN / case / name).read_text())


def inject(case: str) -> tuple[dict, dict, tuple[str, ...]]:
    template = load(case, "template.json")
    inj = build_injection(parse_spec(load(case, "kernelwarmup-spec.json")), user_view(template), cr_name="golden")
    return template, apply_fragment(template, inj.fragment), inj.warnings


@pytest.mark.parametrize("case", CASES)
def test_injected_template_is_the_golden_one(case: str):
    template, injected, warnings = inject(case)
    expected = {"template": injected, "warnings": list(warnings)}
    assert_golden(GOLDEN / case / "injected.json", expected)


@pytest.mark.parametrize("case", CASES)
def test_golden_cases_are_reversible_and_idempotent(case: str):
    template, injected, _ = inject(case)
    assert user_view(injected) == user_view(template)
    again = build_injection(parse_spec(load(case, "kernelwarmup-spec.json")), user_view(injected), cr_name="golden")
    assert apply_fragment(injected, again.fragment) == injected


def test_there_are_golden_cases():
    assert len(CASES) >= 3
