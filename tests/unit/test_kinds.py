"""core/kinds.py is the one list of workload kinds: the CRD's enum and default follow it."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmup_operator.core.kernelwarmup import KINDS as SPEC_KINDS
from warmup_operator.core.kinds import KINDS
from warmup_operator.core.targets import templates

yaml = pytest.importorskip("yaml")

CRD = Path(__file__).resolve().parents[2] / "charts/kernel-warmup/crds/kernelwarmups.kernelwarmup.dev.yaml"


def test_the_crd_and_the_spec_parser_take_the_kinds_from_the_one_list():
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    kinds = schema["properties"]["spec"]["properties"]["targets"]["properties"]["kinds"]
    assert kinds["items"]["enum"] == kinds["default"] == list(KINDS) == list(SPEC_KINDS)


def test_each_kind_finds_its_pod_templates():
    for kind in KINDS.values():
        obj: dict = {}
        for path in kind.template_paths:
            node = obj
            for key in path:
                node = node.setdefault(key, {})
            node["spec"] = {"containers": []}
        assert [p for p, _ in templates(kind, obj)] == list(kind.template_paths)
        assert kind.path("ns", "w").endswith(f"/namespaces/ns/{kind.plural}/w")
