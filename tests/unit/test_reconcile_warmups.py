"""Summaries count only from Pods a target workload controls, with its current hash (issue 11,
item 4): a Pod anyone annotated, one owned by another workload, or one of an old rollout is
ignored."""

from __future__ import annotations

import pytest

from warmup_operator.core import names
from warmup_operator.core.status import WarmupObservation
from warmup_operator.reconcile import Controller

pytestmark = pytest.mark.reliability

DEPLOY = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "llm", "namespace": "ns", "uid": "dep-uid"},
          "spec": {"template": {"metadata": {"annotations": {names.ANN_HASH: "h2"}}, "spec": {}}}}


class OwnerKube:
    """ReplicaSets as the API has them: uid -> controller."""

    objects = {("ReplicaSet", "llm-abc"): ("rs-uid", ("Deployment", "llm", "dep-uid")),
               ("ReplicaSet", "other-abc"): ("rs2-uid", ("Deployment", "other", "other-uid"))}

    def __init__(self):
        self.calls = 0

    def controller_of(self, kind, ns, name, uid):
        self.calls += 1
        have = self.objects.get((kind, name))
        return have[1] if have and have[0] == uid else None


def obs(pod, owner, h="h2"):
    return WarmupObservation("ns", pod, "kw", h, "llm", "2026-01-01T00:00:00Z", 0, {"status": "ok"}, owner=owner)


def test_only_pods_of_the_target_with_its_current_hash_count():
    kube = OwnerKube()
    ctl = Controller(kube)
    good = obs("llm-abc-1", ("ReplicaSet", "llm-abc", "rs-uid"))
    cases = [good,
             obs("forged-no-owner", None),
             obs("forged-fake-rs", ("ReplicaSet", "llm-abc", "not-the-rs-uid")),
             obs("other-workload", ("ReplicaSet", "other-abc", "rs2-uid")),
             obs("old-rollout", ("ReplicaSet", "llm-abc", "rs-uid"), h="h1"),
             obs("unknown-kind", ("Job", "x", "j"))]
    assert ctl.status.accepted_warmups(cases, [DEPLOY]) == [good]
    calls = kube.calls
    ctl.status.accepted_warmups(cases, [DEPLOY])
    assert kube.calls == calls  # owners are immutable: looked up once


def test_a_statefulset_pod_is_its_own_workloads():
    sts = {**DEPLOY, "kind": "StatefulSet", "metadata": {**DEPLOY["metadata"], "uid": "sts-uid"}}
    pod = obs("llm-0", ("StatefulSet", "llm", "sts-uid"))
    assert Controller(OwnerKube()).status.accepted_warmups([pod], [sts]) == [pod]
