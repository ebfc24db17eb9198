"""The local control plane is a real one: the controller-manager turns a Deployment into
a ReplicaSet and Pods (which stay Pending: there is no kubelet or scheduler)."""

from __future__ import annotations

import json

import pytest
from operator_support import get_list, wait_for

pytestmark = pytest.mark.cluster

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "cp-smoke", "namespace": "default"},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "cp-smoke"}},
        "template": {
            "metadata": {"labels": {"app": "cp-smoke"}},
            "spec": {"containers": [{"name": "c", "image": "registry.example/none:1"}]},
        },
    },
}


def test_apiserver_is_ready_and_serves_core_apis(cluster):
    out = cluster.kubectl_run("get", "--raw", "/readyz?verbose").stdout
    assert "readyz check passed" in out
    resources = cluster.kubectl_run("api-resources", "-o", "name").stdout.split()
    assert "deployments.apps" in resources and "customresourcedefinitions.apiextensions.k8s.io" in resources


def test_deployment_gets_replicaset_and_pending_pods(cluster):
    cluster.kubectl_run("apply", "-f", "-", input=json.dumps(DEPLOYMENT))
    try:
        rs = wait_for("the controller-manager to create a ReplicaSet",
                      lambda: get_list(cluster, "replicasets", "default", "-l", "app=cp-smoke"))
        assert len(rs) == 1
        assert rs[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
        pods = wait_for("2 Pods from the ReplicaSet", lambda: (lambda items: items if len(items) == 2 else None)(
            get_list(cluster, "pods", "default", "-l", "app=cp-smoke")))
        for pod in pods:
            assert pod["metadata"]["ownerReferences"][0]["name"] == rs[0]["metadata"]["name"]
            # No scheduler and no kubelet: never bound, never started.
            assert pod["status"]["phase"] == "Pending"
            assert not pod["spec"].get("nodeName")
    finally:
        cluster.kubectl_run("delete", "deployment", "cp-smoke", "-n", "default", "--wait=false", check=False)
