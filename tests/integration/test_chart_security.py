"""The operator's RBAC, as the chart renders it: no wildcard anywhere, and no access to
Secrets (the operator never needs to read them, so it cannot leak them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/kernel-warmup"


def rendered_rules(helm: Path, *values: str) -> list[tuple[str, dict]]:
    args = [str(helm), "template", "kw", str(CHART), "--namespace", "kernel-warmup-system"]
    for v in values:
        args += ["-f", v]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rules = []
    for doc in yaml.safe_load_all(out.stdout):
        if doc and doc.get("kind") in ("Role", "ClusterRole"):
            rules += [(f"{doc['kind']}/{doc['metadata']['name']}", r) for r in doc.get("rules") or []]
    return rules


def value_files() -> list[tuple[str, ...]]:
    return [()] + [(str(p),) for p in sorted((CHART / "ci").glob("*.yaml"))]


@pytest.mark.parametrize("values", value_files(), ids=lambda v: Path(v[0]).name if v else "defaults")
def test_rbac_has_no_wildcard_and_no_secrets(cluster, values):
    if not (CHART / "templates").is_dir():
        pytest.skip("chart templates not present")
    rules = rendered_rules(cluster.helm, *values)
    assert rules, "the chart renders no Role/ClusterRole rules"
    for where, rule in rules:
        for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            for item in rule.get(key) or []:
                assert "*" not in item, f"{where}: wildcard in {key}: {rule}"
        assert "secrets" not in (rule.get("resources") or []), f"{where} grants access to Secrets: {rule}"
        assert not {"escalate", "bind", "impersonate"} & set(rule.get("verbs") or []), f"{where}: {rule}"
