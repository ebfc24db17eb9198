"""A KernelWarmup's deletion never loops on a 422 and a stuck one is visible (issue 11,
items 8 and 9); a failed apply is in the status and an Event (item 9)."""

from __future__ import annotations

import pytest

from warmup_operator.core.decide import CRRecord, Decision
from warmup_operator.core.kinds import DEPLOYMENT
from warmup_operator.reconcile import Controller, Outcome

pytestmark = pytest.mark.reliability


class FakeKube:
    def __init__(self, fail_status=None):
        self.patches = []
        self.fail_status = fail_status

    def patch_cr_status(self, ns, name, patch):
        self.patches.append(patch)

    def get_workload(self, kind, ns, name):
        return workload()

    def apply(self, kind, ns, name, body):
        import kubernetes
        raise kubernetes.client.exceptions.ApiException(status=self.fail_status, reason="Forbidden", body="denied")

    def get_crd(self, name):
        return None


def workload():
    c = {"name": "vllm", "image": "v:1", "resources": {"limits": {"nvidia.com/gpu": 1}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "llm", "namespace": "ns", "annotations": {"kernelwarmup.dev/kernelwarmup": "kw"}},
            "spec": {"template": {"metadata": {}, "spec": {"containers": [c]}}}}


CR = CRRecord("kw", "ns", uid="u", created="2026-01-01T00:00:00Z",
              spec={"targets": {"names": ["llm"]}, "model": {"configPath": "/m/c.json"}})


def outcome(status):
    return Outcome(Decision("remove", "Deployment", "llm", "ns"), error=f"remove Deployment/llm failed: {status}",
                   status=status)


def test_a_422_during_deletion_is_reported_and_not_waited_for():
    events = []
    kube = FakeKube()
    ctl = Controller(kube, emit=lambda *a: events.append(a))
    assert ctl.status.removal_errors(CR, [outcome(422)], {}) == []
    assert [e[2] for e in events] == ["RemovalGivenUp"] and "by hand" in events[0][3]
    assert kube.patches == []


def test_a_stuck_deletion_shows_in_the_status():
    kube = FakeKube()
    ctl = Controller(kube)
    prev = {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Other", "status": "True"}]}
    assert ctl.status.removal_errors(CR, [outcome(503)], prev) == ["remove Deployment/llm failed: 503"]
    conds = {c["type"]: c for c in kube.patches[0]["conditions"]}
    assert conds["Degraded"]["reason"] == "RemovalFailed" and "503" in conds["Degraded"]["message"]
    assert conds["Ready"]["reason"] == "Deleting" and "Other" in conds


@pytest.mark.parametrize("status", [403, 422])
def test_apply_errors_reach_the_status_and_one_event(status):
    events = []
    ctl = Controller(FakeKube(fail_status=status), emit=lambda *a: events.append(a))
    for _ in range(3):
        out = ctl.reconcile_workload(DEPLOYMENT, workload(), [CR])
        assert out.status == status and out.error
    assert sorted(e[2] for e in events) == ["ApplyFailed", "KernelWarmupApplyFailed"]  # once, not per retry
    st = ctl.status.refresh_status(CR, [(DEPLOYMENT, workload())], [CR], [], None)
    target = st["targets"][0]
    assert target["reason"] == "ApplyFailed" and not target["injected"] and str(status) not in target.get("hash", "")
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "failed" in degraded["message"]
