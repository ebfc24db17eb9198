"""The operator against the real local control plane (etcd + kube-apiserver +
kube-controller-manager): injection, rollouts, removal, status, bad specs."""

from __future__ import annotations

import json
import time

import pytest
from operator_support import (
    running_operator,
    apply,
    get,
    get_list,
    kernelwarmup,
    namespace,
    replicasets,
    template_of,
    vllm_deployment,
    wait_for,
)

from warmup_operator.core import names

pytestmark = pytest.mark.cluster
RESYNC_S = 1.0


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory):
    yield from running_operator(cluster, tmp_path_factory, resync_seconds=RESYNC_S)


def annotations(t: dict) -> dict:
    return (t.get("metadata") or {}).get("annotations") or {}


def by_name(items, name):
    return next((i for i in items or [] if i["name"] == name), None)


def test_inject_rollout_update_remove(cluster, operator):
    ns = namespace(cluster, "e2e-lifecycle")
    dep = vllm_deployment("llm", ns, labels={"warm": "yes"})
    apply(cluster, dep)
    original = wait_for("first ReplicaSet", lambda: replicasets(cluster, ns, "llm") and template_of(cluster, "llm", ns))
    assert len(replicasets(cluster, ns, "llm")) == 1

    apply(cluster, kernelwarmup("kw", ns, failurePolicy="Ignore"))
    injected = wait_for("injection", lambda: (t := template_of(cluster, "llm", ns)) and names.ANN_HASH in annotations(t) and t)
    spec = injected["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["fetch-model", *names.INIT_CONTAINERS]
    assert by_name(spec["initContainers"], "fetch-model") == by_name(original["spec"]["initContainers"], "fetch-model")
    warmer = by_name(spec["initContainers"], names.WARMER_CONTAINER)
    serving = by_name(spec["containers"], "vllm")
    assert warmer["command"] == ["python3", "-m", "kernel_warmer", "run", "--spec-env", "KERNEL_WARMER_SPEC"]
    assert warmer["image"] == serving["image"]
    assert warmer["resources"]["limits"]["nvidia.com/gpu"] == serving["resources"]["limits"]["nvidia.com/gpu"]
    env = {e["name"]: e.get("value") for e in serving["env"]}
    assert env["TRITON_CACHE_DIR"] == "/kernel-warmup-cache/triton"
    assert env["KERNEL_WARMUP_FLASHINFER_DIR"] == "/kernel-warmup-cache/flashinfer"
    assert env["PYTHONPATH"] == f"{names.PKG_SITE_DIR}:/opt/plugins"
    assert {v["name"] for v in spec["volumes"]} == {"models", "shm", *names.VOLUMES}
    wspec = json.loads(by_name(warmer["env"], "KERNEL_WARMER_SPEC")["value"])
    assert wspec["failurePolicy"] == "Ignore" and wspec["cacheDir"] == "/kernel-warmup-cache"

    # The controller-manager rolls out a new ReplicaSet whose Pods carry the init containers.
    wait_for("second ReplicaSet", lambda: len(replicasets(cluster, ns, "llm")) == 2)
    pods = wait_for("Pods with the warmer", lambda: [
        p for p in get_list(cluster, "pods", ns)
        if by_name(p["spec"].get("initContainers"), names.WARMER_CONTAINER)])
    assert pods[0]["metadata"]["annotations"][names.ANN_INJECTED_BY] == "kw"
    # Same hash, no patch: a few resyncs later there is still exactly one new rollout.
    gen = get(cluster, "deployment", "llm", ns)["metadata"]["generation"]
    time.sleep(5 * RESYNC_S)
    assert len(replicasets(cluster, ns, "llm")) == 2
    assert get(cluster, "deployment", "llm", ns)["metadata"]["generation"] == gen

    # Changed CR: exactly one new rollout.
    first_hash = annotations(injected)[names.ANN_HASH]
    apply(cluster, kernelwarmup("kw", ns, failurePolicy="Ignore", tensorParallelSize=2))
    wait_for("new hash", lambda: annotations(template_of(cluster, "llm", ns)).get(names.ANN_HASH) not in (None, first_hash))
    wait_for("third ReplicaSet", lambda: len(replicasets(cluster, ns, "llm")) == 3)
    gen = get(cluster, "deployment", "llm", ns)["metadata"]["generation"]
    time.sleep(5 * RESYNC_S)
    assert len(replicasets(cluster, ns, "llm")) == 3
    assert get(cluster, "deployment", "llm", ns)["metadata"]["generation"] == gen

    # Deleted CR: the template is the user's own again, field by field.
    cluster.kubectl_run("delete", "kernelwarmup", "kw", "-n", ns, "--wait=true", "--timeout=60s")
    restored = wait_for("removal", lambda: (t := template_of(cluster, "llm", ns)) and names.ANN_HASH not in annotations(t) and t)
    assert restored == original
    # The original template's ReplicaSet is reused: no fourth ReplicaSet.
    time.sleep(3 * RESYNC_S)
    assert len(replicasets(cluster, ns, "llm")) == 3
    fields = {m["manager"]: json.dumps(m.get("fieldsV1")) for m in get(cluster, "deployment", "llm", ns, managed=True)["metadata"]["managedFields"]}
    # The operator keeps only the user's PYTHONPATH value it handed back (documented).
    ours = fields.get(names.FIELD_MANAGER, "")
    assert "PYTHONPATH" in ours and "initContainers" not in ours and "volumes" not in ours and "annotations" not in ours
    assert get(cluster, "kernelwarmup", "kw", ns) is None


def test_workload_created_after_cr_and_deselection(cluster, operator):
    ns = namespace(cluster, "e2e-late")
    apply(cluster, kernelwarmup("kw", ns))
    dep = vllm_deployment("late", ns, labels={"warm": "yes"})
    dep["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    apply(cluster, dep)
    wait_for("injection", lambda: names.ANN_HASH in annotations(template_of(cluster, "late", ns)))
    st = wait_for("status", lambda: (get(cluster, "kernelwarmup", "kw", ns).get("status") or {}).get("targetsInjected") == "1/1")
    assert st
    # Deselect: relabel the workload; exactly the injection goes away.
    cluster.kubectl_run("label", "deployment", "late", "-n", ns, "warm=no", "--overwrite")
    t = wait_for("removal", lambda: (t := template_of(cluster, "late", ns)) and names.ANN_HASH not in annotations(t) and t)
    assert [(c["name"], c["image"], c["command"]) for c in t["spec"]["initContainers"]] == [
        (c["name"], c["image"], c["command"]) for c in dep["spec"]["template"]["spec"]["initContainers"]]
    assert t["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}]
    assert {v["name"] for v in t["spec"]["volumes"]} == {"models", "shm"}
    managers = {m["manager"] for m in get(cluster, "deployment", "late", ns, managed=True)["metadata"]["managedFields"]}
    assert names.FIELD_MANAGER not in managers  # nothing of ours left
    cluster.kubectl_run("delete", "kernelwarmup", "kw", "-n", ns, "--wait=true", "--timeout=60s")


def test_status_from_a_simulated_kubelet(cluster, operator):
    ns = namespace(cluster, "e2e-status")
    apply(cluster, vllm_deployment("srv", ns, labels={"warm": "yes"}))
    apply(cluster, kernelwarmup("kw", ns))
    pod = wait_for("injected Pod", lambda: next((
        p for p in get_list(cluster, "pods", ns)
        if names.ANN_INJECTED_BY in (p["metadata"].get("annotations") or {})), None))
    from kernel_warmer.report import TritonCounts, WarmupSummary
    summary = WarmupSummary(status="ok", seconds=12.5, cache_key="abc", triton=TritonCounts(compiled=3, hit=1),
                            flashinfer={"status": "ok", "tuned": 4}).compact_json()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def term(name, image, message=""):
        return {"name": name, "image": image, "imageID": "", "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message,
                                         "startedAt": now, "finishedAt": now}}}

    inits = pod["spec"]["initContainers"]
    statuses = [term(c["name"], c["image"], summary if c["name"] == names.WARMER_CONTAINER else "") for c in inits]
    cluster.kubectl_run("patch", "pod", pod["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": {"initContainerStatuses": statuses}}))
    kw = wait_for("lastWarmup in status",
                  lambda: (k := get(cluster, "kernelwarmup", "kw", ns)) and (k.get("status") or {}).get("lastWarmup") and k)
    lw = kw["status"]["lastWarmup"]
    assert lw["succeeded"] is True and lw["seconds"] == 12.5 and lw["pod"] == pod["metadata"]["name"]
    assert lw["summary"]["triton"]["compiled"] == 3 and lw["display"] == "succeeded in 12.5s"
    out = cluster.kubectl_run("get", "kw", "-n", ns).stdout
    assert "succeeded in 12.5s" in out and "1/1" in out and "True" in out, out
    events = wait_for("WarmupSucceeded event", lambda: [
        e for e in get_list(cluster, "events", ns) if e.get("reason") == "WarmupSucceeded"])
    assert events[0]["involvedObject"]["name"] == "kw"
    assert f'kernel_warmup_warmups_total{{kernelwarmup="{ns}/kw",model="Meta-Llama-3.1-8B-Instruct",node="unknown",' \
           'outcome="succeeded"} 1.0' in operator.metrics()
    assert "kernel_warmup_injections_total" in operator.metrics()

    # A failing warmup (crash log as the message) turns Degraded; the log's words stay in the
    # log (issue 11: no text from a Pod reaches the CR), the condition says where to read them.
    failing = [dict(s) for s in statuses]
    failing[-1] = term(names.WARMER_CONTAINER, inits[-1]["image"], "Traceback...\nRuntimeError: CUDA error")
    failing[-1]["state"]["terminated"].update(exitCode=1, reason="Error",
                                               finishedAt=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2)))
    cluster.kubectl_run("patch", "pod", pod["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": {"initContainerStatuses": failing}}))
    cond = wait_for("Degraded", lambda: next((c for c in (get(cluster, "kernelwarmup", "kw", ns).get("status") or {})
                                              .get("conditions", []) if c["type"] == "Degraded" and c["status"] == "True"), None))
    assert cond["reason"] == "WarmupFailed" and "CUDA error" not in cond["message"]
    assert f"kubectl logs {pod['metadata']['name']} -c {names.WARMER_CONTAINER}" in cond["message"]


def test_operator_side_errors_reach_status_and_events(cluster, operator):
    ns = namespace(cluster, "e2e-errors")
    apply(cluster, vllm_deployment("srv", ns, labels={"warm": "yes"}))
    apply(cluster, kernelwarmup("kw", ns, servingContainer="engine"))
    cond = wait_for("Degraded", lambda: next((c for c in (get(cluster, "kernelwarmup", "kw", ns).get("status") or {})
                                              .get("conditions", []) if c["type"] == "Degraded" and c["status"] == "True"), None))
    assert cond["reason"] == "InjectionFailed" and "spec.servingContainer" in cond["message"] and "'engine'" in cond["message"]
    assert names.ANN_HASH not in annotations(template_of(cluster, "srv", ns))
    # Fixing the CR heals it.
    apply(cluster, kernelwarmup("kw", ns, servingContainer="vllm"))
    wait_for("injection", lambda: names.ANN_HASH in annotations(template_of(cluster, "srv", ns)))
    wait_for("Ready", lambda: any(c["type"] == "Ready" and c["status"] == "True"
                                  for c in (get(cluster, "kernelwarmup", "kw", ns).get("status") or {}).get("conditions", [])))
    assert operator.healthy()


BAD_SPECS = [
    ("no-model", {"model": None}, "spec.model"),
    ("both-config-and-layers", {"model": {"configPath": "/m/config.json", "layers": [{"numHeads": 8, "numKvHeads": 8, "headSize": 64}]}}, "spec.model.configPath or spec.model.layers"),
    ("relative-config", {"model": {"configPath": "m/config.json"}}, "spec.model.configPath"),
    ("tp-zero", {"tensorParallelSize": 0}, "spec.tensorParallelSize"),
    ("bad-dtype", {"dtype": "int8"}, "spec.dtype"),
    ("bad-policy", {"failurePolicy": "Maybe"}, "spec.failurePolicy"),
    ("no-targets", {"targets": {}}, "spec.targets"),
    ("empty-selector", {"targets": {"selector": {}}}, "spec.targets.selector"),
    ("bad-kind", {"targets": {"names": ["a"], "kinds": ["Pod"]}}, "spec.targets.kinds"),
    ("two-cache-volumes", {"cache": {"emptyDir": {}, "hostPath": {"path": "/x"}}}, "spec.cache.emptyDir, spec.cache.hostPath"),
    ("relative-mount", {"cache": {"mountPath": "cache"}}, "spec.cache.mountPath"),
    ("reserved-mount", {"cache": {"mountPath": "/kernel-warmup/x"}}, "spec.cache.mountPath"),
    ("bad-target-arch", {"triton": {"compileOnlyTarget": "hopper"}}, "spec.triton.compileOnlyTarget"),
    ("zero-tokens", {"flashinfer": {"maxNumBatchedTokens": 0}}, "spec.flashinfer.maxNumBatchedTokens"),
    ("bad-tuning-mode", {"flashinfer": {"tuning": "every"}}, "spec.flashinfer.tuning"),
    ("heads-not-multiple", {"model": {"layers": [{"numHeads": 10, "numKvHeads": 4, "headSize": 64}]}}, "numHeads must be a multiple of numKvHeads"),
    ("rank-ge-world", {"distributed": {"worldSize": 2, "rank": 2}}, "spec.distributed.rank"),
    ("shell-in-image", {"warmer": {"image": "vllm; rm -rf /"}}, "spec.warmer.image"),
    ("bad-container-name", {"servingContainer": "Bad_Name"}, "spec.servingContainer"),
    ("unknown-field", {"tritonn": {}}, "tritonn"),
]


@pytest.mark.parametrize("case_id,over,field", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_invalid_kernelwarmups_are_rejected(cluster, operator, case_id, over, field):
    ns = namespace(cluster, "e2e-invalid")
    obj = kernelwarmup("bad", ns, **over)
    obj["spec"] = {k: v for k, v in obj["spec"].items() if v is not None}
    r = cluster.kubectl_run("create", "-f", "-", "--dry-run=server", "--validate=strict", input=json.dumps(obj), check=False)
    assert r.returncode != 0, f"{case_id} was accepted: {r.stdout}"
    assert field in r.stderr, r.stderr
