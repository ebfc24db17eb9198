"""Prewarm before the rollout (issue 17), on the real control plane: the operator runs a Job
that fills the shared cache, the real Job controller completes it once the kubelet
stand-in marks its Pod, and only then is the template patched (exactly one rollout).
Failure and timeout under both policies, a KernelWarmup change and an operator restart
mid-Job, deletion, and bad input (RWO claim on two nodes, a selector matching no node, an
unschedulable Job)."""

from __future__ import annotations

import json
import time

import pytest
from fake_kubelet import binding, pod_finished, unschedulable
from operator_support import (
    apply,
    events,
    get,
    get_list,
    kernelwarmup,
    namespace,
    replicasets,
    running_operator,
    template_of,
    vllm_deployment,
    wait_for,
)

from kernel_warmer.report import TritonCounts, WarmupSummary
from warmup_operator.core import names

pytestmark = pytest.mark.cluster
RESYNC_S = 1.0
PVC_CACHE = {"mountPath": "/kernel-warmup-cache", "persistentVolumeClaim": {"claimName": "kernel-cache"}}
OK = WarmupSummary(status="ok", seconds=9.5, cache_key="ab12", triton=TritonCounts(compiled=3)).compact_json()


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory):
    yield from running_operator(cluster, tmp_path_factory, resync_seconds=RESYNC_S)


# --- helpers ---------------------------------------------------------------------------------


def claim(cluster, ns: str, mode: str = "ReadWriteMany", name: str = "kernel-cache") -> None:
    apply(cluster, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": ns},
                    "spec": {"accessModes": [mode], "resources": {"requests": {"storage": "10Gi"}}}})


def injected(cluster, ns: str, name: str = "llm") -> bool:
    return names.ANN_HASH in (template_of(cluster, name, ns)["metadata"].get("annotations") or {})


def jobs(cluster, ns: str) -> list[dict]:
    return get_list(cluster, "jobs", ns, "-l", names.LABEL_PREWARM_CR)


def job_pod(cluster, ns: str, job: str) -> dict:
    return wait_for(f"the Pod of Job {job}", lambda: next(iter(get_list(cluster, "pods", ns, "-l",
                                                                         f"{names.LABEL_JOB_NAME}={job}")), None))


def finish(cluster, ns: str, job: str, message: str = OK, exit_code: int = 0) -> None:
    """The kubelet stand-in: the Job's Pod ran its warmer and ended."""
    pod = job_pod(cluster, ns, job)
    cluster.kubectl_run("patch", "pod", pod["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge",
                        "-p", json.dumps(pod_finished(pod, names.WARMER_CONTAINER, message, exit_code)))


def kw_status(cluster, ns: str) -> dict:
    return (get(cluster, "kernelwarmup", "kw", ns) or {}).get("status") or {}


def target(cluster, ns: str) -> dict:
    return next(iter(kw_status(cluster, ns).get("targets") or []), {})


def condition(cluster, ns: str, type_: str) -> dict:
    return next((c for c in kw_status(cluster, ns).get("conditions") or [] if c["type"] == type_), {})


def start(cluster, ns: str, replicas: int = 1, **kw_spec) -> dict:
    """A Deployment (its first rollout done) and a KernelWarmup with a shared cache; the
    one prewarm Job the operator created for it."""
    apply(cluster, vllm_deployment("llm", ns, labels={"warm": "yes"}, replicas=replicas))
    wait_for("first ReplicaSet", lambda: replicasets(cluster, ns, "llm"))
    apply(cluster, kernelwarmup("kw", ns, **{"cache": PVC_CACHE, **kw_spec}))
    return wait_for("a prewarm Job", lambda: next(iter(jobs(cluster, ns)), None), timeout_s=30)


def assert_held(cluster, ns: str, resyncs: int = 3) -> None:
    time.sleep(resyncs * RESYNC_S)
    assert not injected(cluster, ns) and len(replicasets(cluster, ns, "llm")) == 1


# --- the main story --------------------------------------------------------------------------


def test_template_waits_for_the_job_then_one_rollout(cluster, operator):
    ns = namespace(cluster, "prewarm-main")
    claim(cluster, ns)
    job = start(cluster, ns, failurePolicy="Fail")
    name = job["metadata"]["name"]
    pod = job["spec"]["template"]["spec"]
    serving = template_of(cluster, "llm", ns)["spec"]["containers"][0]
    warmer = pod["containers"][0]
    assert warmer["image"] == serving["image"] and warmer["command"][-3:] == ["run", "--spec-env", "KERNEL_WARMER_SPEC"]
    assert warmer["resources"]["limits"]["nvidia.com/gpu"] == serving["resources"]["limits"]["nvidia.com/gpu"]
    assert {"name": names.CACHE_VOLUME, "persistentVolumeClaim": {"claimName": "kernel-cache"}} in pod["volumes"]
    assert job["metadata"]["ownerReferences"][0]["name"] == "kw" and job["spec"]["ttlSecondsAfterFinished"] > 0

    wait_for("status Prewarming with the Job's name", lambda: target(cluster, ns).get("prewarm", {}).get("jobs") == [name]
             and target(cluster, ns)["prewarm"]["phase"] == "Prewarming")
    assert condition(cluster, ns, "Ready")["reason"] == "Prewarming"
    assert condition(cluster, ns, "Degraded")["status"] == "False"
    assert_held(cluster, ns)  # the template is not patched while the Job runs

    finish(cluster, ns, name)  # the stand-in kubelet; the real Job controller completes the Job
    wait_for("Job Complete", lambda: any(c["type"] == "Complete" and c["status"] == "True"
                                         for c in (get(cluster, "job", name, ns) or {}).get("status", {}).get("conditions") or []))
    wait_for("the template patched", lambda: injected(cluster, ns), timeout_s=30)
    hash_ = template_of(cluster, "llm", ns)["metadata"]["annotations"][names.ANN_HASH]
    assert hash_ == job["metadata"]["labels"][names.LABEL_PREWARM_HASH]  # the Job warmed what was rolled out
    wait_for("the Job's summary in status", lambda: target(cluster, ns).get("prewarm", {}).get("phase") == "Succeeded")
    pw = target(cluster, ns)["prewarm"]
    assert pw["summary"]["triton"]["compiled"] == 3 and pw["summary"]["cacheKey"] == "ab12" and pw["hash"] == hash_
    time.sleep(3 * RESYNC_S)
    assert len(replicasets(cluster, ns, "llm")) == 2  # exactly one rollout
    assert len(jobs(cluster, ns)) == 1  # no second Job for the same hash
    assert events(cluster, ns, "PrewarmStarted") and events(cluster, ns, "PrewarmSucceeded")
    assert 'kernel_warmup_prewarms_total{outcome="succeeded"}' in operator.metrics()


@pytest.mark.parametrize("how", ["failed", "timeout"])
@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
def test_failure_and_timeout_under_both_policies(cluster, operator, how, policy):
    ns = namespace(cluster, f"prewarm-{how}-{policy.lower()}")
    claim(cluster, ns)
    extra = {"prewarm": {"timeoutSeconds": 3}} if how == "timeout" else {}
    job = start(cluster, ns, failurePolicy=policy, **extra)
    if how == "failed":
        bad = WarmupSummary(status="failed", seconds=1.0, error="2 triton variant(s) failed").compact_json()
        finish(cluster, ns, job["metadata"]["name"], bad, exit_code=1)
    phase, reason = ("Failed", "BackoffLimitExceeded") if how == "failed" else ("TimedOut", "DeadlineExceeded")
    wait_for(f"prewarm {phase} in status", lambda: target(cluster, ns).get("prewarm", {}).get("phase") == phase,
             timeout_s=40)
    assert target(cluster, ns)["prewarm"]["reason"] == reason
    event = "PrewarmFailed" if how == "failed" else "PrewarmTimedOut"
    wait_for(f"{event} Event", lambda: events(cluster, ns, event))
    if policy == "Fail":
        assert_held(cluster, ns)
        degraded = condition(cluster, ns, "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == ("PrewarmFailed" if how == "failed" else "PrewarmTimedOut")
        assert reason in degraded["message"] and "failurePolicy Fail" in degraded["message"]
    else:
        wait_for("the template patched anyway", lambda: injected(cluster, ns), timeout_s=30)
        time.sleep(3 * RESYNC_S)
        assert len(replicasets(cluster, ns, "llm")) == 2
        assert "failurePolicy Ignore" in target(cluster, ns)["message"]


def test_a_change_mid_job_supersedes_it_one_rollout(cluster, operator):
    ns = namespace(cluster, "prewarm-change")
    claim(cluster, ns)
    first = start(cluster, ns, failurePolicy="Fail")
    apply(cluster, kernelwarmup("kw", ns, cache=PVC_CACHE, failurePolicy="Fail", timeoutSeconds=900))
    second = wait_for("a new Job for the new hash", lambda: next(
        (j for j in jobs(cluster, ns) if j["metadata"]["name"] != first["metadata"]["name"]), None), timeout_s=30)
    wait_for("the old Job deleted", lambda: [j["metadata"]["name"] for j in jobs(cluster, ns)] == [second["metadata"]["name"]])
    assert events(cluster, ns, "PrewarmSuperseded")
    assert_held(cluster, ns)
    finish(cluster, ns, second["metadata"]["name"])
    wait_for("the template patched", lambda: injected(cluster, ns), timeout_s=30)
    assert template_of(cluster, "llm", ns)["metadata"]["annotations"][names.ANN_HASH] == \
        second["metadata"]["labels"][names.LABEL_PREWARM_HASH]
    time.sleep(3 * RESYNC_S)
    assert len(replicasets(cluster, ns, "llm")) == 2  # never two rollouts


def test_a_restarted_operator_adopts_the_running_job(cluster, operator):
    ns = namespace(cluster, "prewarm-restart")
    claim(cluster, ns)
    job = start(cluster, ns, failurePolicy="Fail")
    operator.stop()
    operator.start()
    assert_held(cluster, ns, resyncs=4)
    assert [(j["metadata"]["name"], j["metadata"]["uid"]) for j in jobs(cluster, ns)] == \
        [(job["metadata"]["name"], job["metadata"]["uid"])]  # adopted, not started again
    finish(cluster, ns, job["metadata"]["name"])
    wait_for("the template patched", lambda: injected(cluster, ns), timeout_s=30)


def test_deleting_the_kernelwarmup_leaves_no_job(cluster, operator):
    ns = namespace(cluster, "prewarm-delete")
    claim(cluster, ns)
    start(cluster, ns, failurePolicy="Fail")
    cluster.kubectl_run("delete", "kernelwarmup", "kw", "-n", ns, "--wait=true", "--timeout=60s")
    wait_for("no Job and no Job Pod left", lambda: not jobs(cluster, ns)
             and not get_list(cluster, "pods", ns, "-l", names.LABEL_PREWARM_CR), timeout_s=30)
    assert not injected(cluster, ns) and len(replicasets(cluster, ns, "llm")) == 1


# --- bad input ---------------------------------------------------------------------------------


@pytest.fixture()
def nodes(cluster):
    made: list[str] = []

    def make(name: str, **labels: str) -> str:
        apply(cluster, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
        made.append(name)
        return name
    yield make
    for n in made:
        cluster.kubectl_run("delete", "node", n, check=False)


def test_rwo_claim_with_pods_on_two_nodes_is_refused_naming_the_field(cluster, operator, nodes):
    ns = namespace(cluster, "prewarm-rwo")
    claim(cluster, ns, mode="ReadWriteOnce")
    apply(cluster, vllm_deployment("llm", ns, labels={"warm": "yes"}, replicas=2))
    pods = wait_for("two Pods", lambda: len(p := get_list(cluster, "pods", ns)) == 2 and p)
    for pod, node in zip(pods, (nodes("prewarm-rwo-a"), nodes("prewarm-rwo-b"))):  # the scheduler stand-in
        cluster.kubectl_run("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}/binding",
                            "-f", "-", input=json.dumps(binding(pod["metadata"]["name"], node)))
    apply(cluster, kernelwarmup("kw", ns, cache=PVC_CACHE, failurePolicy="Fail"))
    wait_for("CacheNotShared in status", lambda: target(cluster, ns).get("prewarm", {}).get("reason") == "CacheNotShared")
    msg = target(cluster, ns)["message"]
    assert "spec.cache.persistentVolumeClaim.claimName" in msg and "ReadWriteOnce" in msg and "2 nodes" in msg
    assert events(cluster, ns, "CacheNotShared") and not jobs(cluster, ns)
    assert condition(cluster, ns, "Degraded")["status"] == "True"
    assert not injected(cluster, ns)
    dep = get(cluster, "deployment", "llm", ns)
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["template"]["spec"]["initContainers"][0]["name"] == "fetch-model"


@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
def test_node_selector_matching_no_node(cluster, operator, nodes, policy):
    ns = namespace(cluster, f"prewarm-nonode-{policy.lower()}")
    nodes(f"prewarm-nonode-{policy.lower()}", gpu="h100")
    apply(cluster, vllm_deployment("llm", ns, labels={"warm": "yes"}))
    wait_for("first ReplicaSet", lambda: replicasets(cluster, ns, "llm"))
    apply(cluster, kernelwarmup("kw", ns, failurePolicy=policy, cache={"hostPath": {"path": "/var/cache/kernel-warmup"}},
                                prewarm={"nodes": {"source": "Selector", "selector": {"matchLabels": {"gpu": "b200"}}}}))
    wait_for("NoPrewarmNodes in status", lambda: target(cluster, ns).get("prewarm", {}).get("reason") == "NoPrewarmNodes")
    assert "spec.prewarm.nodes.selector" in target(cluster, ns)["prewarm"]["message"]
    wait_for("NoPrewarmNodes Event", lambda: events(cluster, ns, "NoPrewarmNodes"))
    if policy == "Fail":
        assert_held(cluster, ns)
    else:
        wait_for("injected anyway", lambda: injected(cluster, ns), timeout_s=30)
    assert not jobs(cluster, ns)


def test_hostpath_one_job_per_selected_node_then_one_rollout(cluster, operator, nodes):
    ns = namespace(cluster, "prewarm-nodes")
    picked = sorted([nodes("prewarm-gpu-1", pool="prewarm-test"), nodes("prewarm-gpu-2", pool="prewarm-test")])
    nodes("prewarm-cpu-1", pool="other")
    apply(cluster, vllm_deployment("llm", ns, labels={"warm": "yes"}))
    wait_for("first ReplicaSet", lambda: replicasets(cluster, ns, "llm"))
    apply(cluster, kernelwarmup("kw", ns, failurePolicy="Fail", cache={"hostPath": {"path": "/var/cache/kernel-warmup"}},
                                prewarm={"nodes": {"source": "Selector", "selector": {"matchLabels": {"pool": "prewarm-test"}}}}))
    both = wait_for("one Job per node", lambda: len(j := jobs(cluster, ns)) == 2 and j, timeout_s=30)
    assert sorted(j["metadata"]["annotations"][names.ANN_PREWARM_NODE] for j in both) == picked
    for j in both:
        terms = j["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [j["metadata"]["annotations"][names.ANN_PREWARM_NODE]]
    finish(cluster, ns, both[0]["metadata"]["name"])
    assert_held(cluster, ns)  # one node done, one to go
    finish(cluster, ns, both[1]["metadata"]["name"])
    wait_for("the template patched", lambda: injected(cluster, ns), timeout_s=30)
    time.sleep(3 * RESYNC_S)
    assert len(replicasets(cluster, ns, "llm")) == 2


def test_an_unschedulable_job_is_reported_and_the_policy_decides_at_the_timeout(cluster, operator):
    ns = namespace(cluster, "prewarm-unsched")
    claim(cluster, ns)
    job = start(cluster, ns, failurePolicy="Ignore", prewarm={"timeoutSeconds": 8})
    pod = job_pod(cluster, ns, job["metadata"]["name"])
    cluster.kubectl_run("patch", "pod", pod["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge",
                        "-p", json.dumps(unschedulable("0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")))
    wait_for("Unschedulable in status", lambda: target(cluster, ns).get("prewarm", {}).get("reason") == "Unschedulable")
    msg = target(cluster, ns)["prewarm"]["message"]
    assert "Insufficient nvidia.com/gpu" in msg and "spec.prewarm.nodes" in msg and "nodeSelector" in msg
    wait_for("PrewarmUnschedulable Event", lambda: events(cluster, ns, "PrewarmUnschedulable"))
    assert not injected(cluster, ns)
    wait_for("timed out, then injected anyway (Ignore)", lambda: injected(cluster, ns), timeout_s=40)
    wait_for("TimedOut in status", lambda: target(cluster, ns).get("prewarm", {}).get("phase") == "TimedOut")
