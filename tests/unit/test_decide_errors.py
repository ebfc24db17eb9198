"""A selector that also matches a workload without GPUs: an error for the CR's status, no change
(reliability)."""

from __future__ import annotations

import pytest
from support.workloads import container, spec_doc, template

from warmup_operator.core.decide import CRRecord
from warmup_operator.core.kinds import DEPLOYMENT

pytestmark = pytest.mark.reliability


def test_selector_matching_a_non_gpu_workload_is_reported_not_injected():
    """A selector that also matches, say, a CPU-only web frontend: that workload gets an
    error naming spec.servingContainer in the CR's status, and no change."""
    from warmup_operator.core.decide import decide
    obj = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "frontend", "namespace": "ns", "labels": {"app": "vllm"},
                        "annotations": {"kernelwarmup.dev/kernelwarmup": "kw"}},
           "spec": {"template": template(container("web", gpus=0))}}
    kw = CRRecord("kw", "ns", uid="u1", created="2026-01-01T00:00:00Z",
                  spec=spec_doc(targets={"selector": {"matchLabels": {"app": "vllm"}}}))
    d = decide(DEPLOYMENT, obj, [kw])
    assert d.action == "none" and d.error is not None and d.error.field == "spec.servingContainer"

