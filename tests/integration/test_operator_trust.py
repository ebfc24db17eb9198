"""Issue 11 against the real control plane: a KernelWarmup is not a way into someone else's
workload. The attacker is a namespace user whose Role (made with the API's own RBAC) allows
KernelWarmups and nothing else; each escalation of the review is tried with that user's
token, and the victim's Deployment is checked to be exactly as it was (same generation,
same template, one ReplicaSet), with the refusal in the KernelWarmup's status and Events.
"""

from __future__ import annotations

import json
from pathlib import Path

import helmchart
import pytest
from operator_process import OperatorProcess
from operator_support import (
    apply,
    get,
    get_list,
    install_crd,
    kernelwarmup,
    namespace,
    replicasets,
    simulate_init_termination,
    template_of,
    vllm_deployment,
    wait_for,
)

from warmup_operator.core import names
from warmup_operator.core.trust import OPT_IN

pytestmark = [pytest.mark.cluster, pytest.mark.reliability]
RESYNC_S = 1.0
NS = "trust"
ALLOWED_IMAGE = "registry.local/allowed/warmer:1"
SHARED = "/var/cache/kw-shared"  # a node folder only test_one_cache_one_mount_path_cluster_wide uses


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory):
    install_crd(cluster)
    namespace(cluster, NS)
    proc = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log",
                           resync_seconds=RESYNC_S, bootstrap_image="registry.local/kernel-warmup:test",
                           extra_args=("--allow-warmer-image=registry.local/allowed/*",
                                       "--allow-hostpath=/var/cache/kernel-warmup", f"--allow-hostpath={SHARED}"))
    proc.start()
    yield proc
    proc.stop()
    print("---- operator log (tail) ----\n" + proc.log_tail(80))


@pytest.fixture(scope="module")
def attacker(cluster, operator, tmp_path_factory) -> Path:
    """A kubeconfig for a user who may create KernelWarmups in NS, and nothing else."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "kw-author", "namespace": NS},
            "rules": [{"apiGroups": ["kernelwarmup.dev"], "resources": ["kernelwarmups"],
                       "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "kw-author", "namespace": NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kw-author"},
               "subjects": [{"kind": "ServiceAccount", "name": "kw-author", "namespace": NS}]}
    cluster.kubectl_run("create", "serviceaccount", "kw-author", "-n", NS, check=False)
    apply(cluster, role)
    apply(cluster, binding)
    tools = helmchart.Tools(helm=cluster.helm, kubectl=cluster.kubectl, kubeconfig=cluster.kubeconfig)
    kc = helmchart.service_account_kubeconfig(tools, NS, "kw-author", tmp_path_factory.mktemp("attacker") / "kubeconfig")
    for verb, what in (("patch", "deployments"), ("create", "pods"), ("get", "secrets")):
        r = cluster.kubectl_run(f"--kubeconfig={kc}", "auth", "can-i", verb, what, "-n", NS, check=False)
        assert r.stdout.strip() == "no", f"the attacker may {verb} {what}: the test would prove nothing"
    return kc


def as_attacker(cluster, kc: Path, obj: dict, check: bool = True):
    return cluster.kubectl_run(f"--kubeconfig={kc}", "apply", "-f", "-", input=json.dumps(obj), check=check)


def victim(cluster, name: str, opt_in=None, **extra) -> dict:
    dep = vllm_deployment(name, NS, labels={"team": "other"}, opt_in=opt_in)
    dep["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}})
    for key, value in extra.items():
        dep["spec"]["template"]["spec"][key] = value
    apply(cluster, dep)
    return wait_for("victim's ReplicaSet", lambda: replicasets(cluster, NS, name) and get(cluster, "deployment", name, NS))


def target_entry(cluster, kw: str, workload: str) -> dict:
    st = (get(cluster, "kernelwarmup", kw, NS) or {}).get("status") or {}
    return next((t for t in st.get("targets") or [] if t["name"] == workload), {})


def events_for(cluster, kw: str, reason: str) -> list[dict]:
    return [e for e in get_list(cluster, "events", NS, f"--field-selector=involvedObject.name={kw},reason={reason}")]


def assert_unchanged(cluster, name: str, before: dict) -> None:
    now = get(cluster, "deployment", name, NS)
    assert now["metadata"]["generation"] == before["metadata"]["generation"]
    assert now["spec"]["template"] == before["spec"]["template"]
    assert names.ANN_HASH not in (now["spec"]["template"]["metadata"].get("annotations") or {})
    assert len(replicasets(cluster, NS, name)) == 1


def refused(cluster, kw: str, workload: str, reason: str) -> dict:
    entry = wait_for(f"{reason} in {kw}'s status", lambda: (t := target_entry(cluster, kw, workload))
                     and t.get("reason") == reason and t)
    wait_for(f"a {reason} Event", lambda: events_for(cluster, kw, reason))
    return entry


def test_attacker_cannot_inject_into_a_workload_that_did_not_opt_in(cluster, operator, attacker):
    before = victim(cluster, "victim-a")
    kw = kernelwarmup("evil-a", NS, targets={"names": ["victim-a"]}, warmer={"image": "evil.example/x:1"})
    as_attacker(cluster, attacker, kw)
    entry = refused(cluster, "evil-a", "victim-a", "NotOptedIn")
    assert entry["injected"] is False and OPT_IN in entry["message"] and "kubectl label" in entry["message"]
    assert_unchanged(cluster, "victim-a", before)
    cond = {c["type"]: c for c in get(cluster, "kernelwarmup", "evil-a", NS)["status"]["conditions"]}
    assert cond["Ready"]["status"] == "False" and cond["Degraded"]["status"] == "True"


def test_opt_in_names_one_kernelwarmup_and_no_other(cluster, operator, attacker):
    before = victim(cluster, "victim-b", opt_in="their-kw")
    as_attacker(cluster, attacker, kernelwarmup("evil-b", NS, targets={"names": ["victim-b"]}))
    entry = refused(cluster, "evil-b", "victim-b", "NotOptedIn")
    assert "'their-kw'" in entry["message"]
    assert_unchanged(cluster, "victim-b", before)


def test_image_override_must_be_on_the_install_time_allow_list(cluster, operator, attacker):
    before = victim(cluster, "victim-c", opt_in="warm-c")
    as_attacker(cluster, attacker, kernelwarmup("warm-c", NS, targets={"names": ["victim-c"]},
                                                warmer={"image": "evil.example/x:1"}))
    entry = refused(cluster, "warm-c", "victim-c", "ImageNotAllowed")
    assert "spec.warmer.image" in entry["message"] and "warmer.allowedImages" in entry["message"]
    assert_unchanged(cluster, "victim-c", before)
    # An allowed image is used as asked.
    as_attacker(cluster, attacker, kernelwarmup("warm-c", NS, targets={"names": ["victim-c"]},
                                                warmer={"image": ALLOWED_IMAGE}))
    t = wait_for("injection with the allowed image", lambda: (t := template_of(cluster, "victim-c", NS))
                 and names.ANN_HASH in (t["metadata"].get("annotations") or {}) and t)
    warmer = next(c for c in t["spec"]["initContainers"] if c["name"] == names.WARMER_CONTAINER)
    boot = next(c for c in t["spec"]["initContainers"] if c["name"] == names.BOOTSTRAP_CONTAINER)
    assert warmer["image"] == ALLOWED_IMAGE and boot["image"] == "registry.local/kernel-warmup:test"


@pytest.mark.parametrize("python", ["/kernel-warmup-cache/x", "../../../tmp/x"])
def test_the_author_does_not_choose_the_warmers_executable(cluster, operator, attacker, python):
    """Issue 25 item 1: spec.warmer.python names only an installer-listed interpreter; the
    default is the serving container's own."""
    name = "victim-py" + str(len(python))
    before = victim(cluster, name, opt_in="warm-py" + str(len(python)))
    kw = "warm-py" + str(len(python))
    as_attacker(cluster, attacker, kernelwarmup(kw, NS, targets={"names": [name]}, warmer={"python": python}))
    entry = refused(cluster, kw, name, "PythonNotAllowed")
    assert "spec.warmer.python" in entry["message"] and "warmer.allowedPythons" in entry["message"]
    assert_unchanged(cluster, name, before)
    as_attacker(cluster, attacker, kernelwarmup(kw, NS, targets={"names": [name]}))
    t = wait_for("injection with the serving container's Python", lambda: (t := template_of(cluster, name, NS))
                 and names.ANN_HASH in (t["metadata"].get("annotations") or {}) and t)
    warmer = next(c for c in t["spec"]["initContainers"] if c["name"] == names.WARMER_CONTAINER)
    assert warmer["command"][0] == "python3"


def test_bootstrap_image_is_no_field_of_the_crd(cluster, operator, attacker):
    r = as_attacker(cluster, attacker, kernelwarmup("evil-d", NS, targets={"names": ["x"]},
                                                    warmer={"bootstrapImage": "evil.example/boot:1"}), check=False)
    assert r.returncode != 0 and "bootstrapImage" in r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("path", ["//etc", "/var/cache/kernel-warmup/../../etc", "/var/./run", "/var/cache/kernel-warmup/"])
def test_hostpath_tricks_are_refused_at_apply_time(cluster, operator, attacker, path):
    r = as_attacker(cluster, attacker, kernelwarmup("evil-e", NS, targets={"names": ["x"]},
                                                    cache={"hostPath": {"path": path}}), check=False)
    assert r.returncode != 0 and "spec.cache.hostPath.path" in r.stderr, r.stderr


@pytest.mark.parametrize("path", ["/etc", "/var/run", "/var/lib/kubelet", "/var/cache/kernel-warmup/sub"])
def test_hostpath_outside_the_allow_list_is_refused_by_the_operator(cluster, operator, attacker, path):
    name = "victim-f"
    before = get(cluster, "deployment", name, NS) or victim(cluster, name, opt_in="warm-f")
    as_attacker(cluster, attacker, kernelwarmup("warm-f", NS, targets={"names": [name]},
                                                cache={"hostPath": {"path": path}}))
    entry = wait_for("HostPathNotAllowed", lambda: (t := target_entry(cluster, "warm-f", name))
                     and path in t.get("message", "") and t)
    assert entry["reason"] == "HostPathNotAllowed" and "cache.hostPathAllowed" in entry["message"]
    assert events_for(cluster, "warm-f", "HostPathNotAllowed")
    assert_unchanged(cluster, name, before)


def test_hostpath_in_a_pod_security_baseline_namespace_is_reported_before_the_rollout(cluster, operator):
    ns = namespace(cluster, "trust-psa")
    cluster.kubectl_run("label", "namespace", ns, "pod-security.kubernetes.io/enforce=baseline", "--overwrite")
    dep = vllm_deployment("srv", ns, opt_in="warm-g")
    apply(cluster, dep)
    before = wait_for("ReplicaSet", lambda: replicasets(cluster, ns, "srv") and get(cluster, "deployment", "srv", ns))
    apply(cluster, kernelwarmup("warm-g", ns, targets={"names": ["srv"]},
                                cache={"hostPath": {"path": "/var/cache/kernel-warmup"}}))
    entry = wait_for("HostPathRefusedByPodSecurity", lambda: (t := next(
        (t for t in ((get(cluster, "kernelwarmup", "warm-g", ns) or {}).get("status") or {}).get("targets") or []), {}))
        .get("reason") == "HostPathRefusedByPodSecurity" and t)
    assert "baseline" in entry["message"]
    now = get(cluster, "deployment", "srv", ns)
    assert now["metadata"]["generation"] == before["metadata"]["generation"]


def test_reserved_names_are_refused_and_deletion_does_not_loop(cluster, operator):
    mine = {"name": names.WARMER_CONTAINER, "image": "busybox:1.36", "command": ["true"]}
    before = victim(cluster, "victim-h", opt_in="warm-h", initContainers=[mine])
    apply(cluster, kernelwarmup("warm-h", NS, targets={"names": ["victim-h"]}))
    entry = refused(cluster, "warm-h", "victim-h", "ReservedName")
    assert names.WARMER_CONTAINER in entry["message"]
    assert_unchanged(cluster, "victim-h", before)
    cluster.kubectl_run("delete", "kernelwarmup", "warm-h", "-n", NS, "--wait=true", "--timeout=30s")
    assert get(cluster, "kernelwarmup", "warm-h", NS) is None
    assert_unchanged(cluster, "victim-h", before)


def test_status_carries_no_text_from_the_pod(cluster, operator):
    """The review read `exfil: HF_TOKEN=...` back from status.lastWarmup.summary.text."""
    victim(cluster, "victim-i", opt_in="warm-i")
    apply(cluster, kernelwarmup("warm-i", NS, targets={"names": ["victim-i"]}))
    pod = wait_for("a Pod with the warmer", lambda: next(
        (p for p in get_list(cluster, "pods", NS, "-l", "pod=victim-i")
         if names.ANN_HASH in (p["metadata"].get("annotations") or {})), None))
    secret = "hf_exfiltrated_0123456789"
    message = json.dumps({"status": "failed", "seconds": 1.5, "cacheKey": f"exfil: HF_TOKEN={secret}",
                          "error": f"exfil: HF_TOKEN={secret}", "triton": {"compiled": "x" + secret},
                          "flashinfer": {"status": secret}, "details": {"leak": secret}, "extra": secret})
    simulate_init_termination(cluster, pod, message, warmer_exit_code=1)
    status = wait_for("lastWarmup", lambda: (get(cluster, "kernelwarmup", "warm-i", NS) or {}).get("status", {})
                      .get("lastWarmup") and get(cluster, "kernelwarmup", "warm-i", NS)["status"])
    assert secret not in json.dumps(status)
    assert status["lastWarmup"]["summary"] == {"status": "failed", "seconds": 1.5, "failureReason": "WarmupFailed",
                                               "triton": {"compiled": 0, "hit": 0, "skipped": 0, "failed": 0}}
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "WarmupFailed" and "kubectl logs" in degraded["message"]
    for e in get_list(cluster, "events", NS):
        assert secret not in json.dumps(e)


def test_drift_is_repaired(cluster, operator):
    """Someone removes the injected init containers but leaves the hash annotation."""
    victim(cluster, "victim-j", opt_in="warm-j")
    apply(cluster, kernelwarmup("warm-j", NS, targets={"names": ["victim-j"]}))
    t = wait_for("injection", lambda: (t := template_of(cluster, "victim-j", NS))
                 and names.ANN_HASH in (t["metadata"].get("annotations") or {}) and t)
    keep = [i for i, c in enumerate(t["spec"]["initContainers"]) if c["name"] not in names.INIT_CONTAINERS]
    patch = [{"op": "replace", "path": "/spec/template/spec/initContainers",
              "value": [t["spec"]["initContainers"][i] for i in keep]}]
    cluster.kubectl_run("patch", "deployment", "victim-j", "-n", NS, "--type=json", "-p", json.dumps(patch))
    wait_for("re-injection", lambda: {c["name"] for c in template_of(cluster, "victim-j", NS)["spec"]["initContainers"]}
             >= set(names.INIT_CONTAINERS))


def forged_pod(real: dict, name: str, owner: dict | None) -> dict:
    """A Pod like ``real`` (same annotations, so same KernelWarmup and hash) that no target
    controls; labels changed so no ReplicaSet adopts it."""
    spec = {k: v for k, v in real["spec"].items() if k not in ("nodeName",)}
    meta = {"name": name, "namespace": NS, "labels": {"forged": "yes"}, "annotations": real["metadata"]["annotations"]}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def test_summaries_count_only_from_the_targets_own_pods(cluster, operator):
    victim(cluster, "victim-k", opt_in="warm-k")
    other = victim(cluster, "bystander-k")
    apply(cluster, kernelwarmup("warm-k", NS, targets={"names": ["victim-k"]}))
    h = wait_for("injection", lambda: (template_of(cluster, "victim-k", NS)["metadata"].get("annotations") or {})
                 .get(names.ANN_HASH))
    real = wait_for("a Pod of the new rollout", lambda: next(
        (p for p in get_list(cluster, "pods", NS, "-l", "pod=victim-k")
         if (p["metadata"].get("annotations") or {}).get(names.ANN_HASH) == h), None))
    simulate_init_termination(cluster, real, json.dumps({"status": "ok", "seconds": 3.0}))
    wait_for("the real warmup in status", lambda: ((get(cluster, "kernelwarmup", "warm-k", NS) or {}).get("status") or {})
             .get("lastWarmup", {}).get("pod") == real["metadata"]["name"])
    rs = replicasets(cluster, NS, "bystander-k")[0]
    foreign = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs["metadata"]["name"],
               "uid": rs["metadata"]["uid"], "controller": True}
    assert other["metadata"]["name"] == "bystander-k"
    for name, owner in (("forged-orphan", None), ("forged-foreign", foreign)):
        apply(cluster, forged_pod(real, name, owner))
        pod = get(cluster, "pod", name, NS)
        simulate_init_termination(cluster, pod, json.dumps({"status": "failed", "error": "forged"}), warmer_exit_code=1)
    import time
    time.sleep(4 * RESYNC_S)
    status = get(cluster, "kernelwarmup", "warm-k", NS)["status"]
    assert status["lastWarmup"]["pod"] == real["metadata"]["name"] and status["lastWarmup"]["succeeded"] is True
    assert next(c for c in status["conditions"] if c["type"] == "Degraded")["status"] == "False"
    assert events_for(cluster, "warm-k", "WarmupSucceeded")  # the real one is announced
    assert not [e for e in events_for(cluster, "warm-k", "WarmupFailed") if "forged" in e.get("message", "")]


def _cache_volume(cluster, name: str, ns: str) -> dict:
    return next(v for v in template_of(cluster, name, ns)["spec"]["volumes"] if v["name"] == names.CACHE_VOLUME)


def test_a_node_folder_is_one_cache_per_namespace(cluster, operator):
    """Issue 25 item 2: one node folder was one read-write cache for every namespace's servers
    (and an idle KernelWarmup elsewhere could squat its mount path). Each namespace now gets
    its own sub-folder; within one, Triton's absolute paths still make it one mount path."""
    cache = {"hostPath": {"path": SHARED}}  # other tests' KernelWarmups use the default folder
    other_ns = namespace(cluster, "trust-other")
    apply(cluster, vllm_deployment("srv", other_ns, opt_in="first"))
    apply(cluster, kernelwarmup("first", other_ns, targets={"names": ["srv"]}, cache={"mountPath": "/cache-a", **cache}))
    wait_for("the first injection", lambda: names.ANN_HASH in (template_of(cluster, "srv", other_ns)["metadata"]
                                                               .get("annotations") or {}))
    victim(cluster, "victim-l", opt_in="warm-l")
    apply(cluster, kernelwarmup("warm-l", NS, targets={"names": ["victim-l"]}, cache={"mountPath": "/cache-b", **cache}))
    wait_for("injected at its own path", lambda: names.ANN_HASH in (template_of(cluster, "victim-l", NS)["metadata"]
                                                                    .get("annotations") or {}))
    assert _cache_volume(cluster, "srv", other_ns)["hostPath"] == {"path": f"{SHARED}/namespaces/trust-other",
                                                                   "type": "DirectoryOrCreate"}
    assert _cache_volume(cluster, "victim-l", NS)["hostPath"]["path"] == f"{SHARED}/namespaces/{NS}"
    # One namespace's folder, two mount paths: refused, naming the path to use.
    before = victim(cluster, "victim-l2", opt_in="warm-l2")
    apply(cluster, kernelwarmup("warm-l2", NS, targets={"names": ["victim-l2"]}, cache={"mountPath": "/cache-c", **cache}))
    entry = refused(cluster, "warm-l2", "victim-l2", "CacheMountPathConflict")
    assert "/cache-b" in entry["message"] and f"{NS}/warm-l" in entry["message"]
    assert_unchanged(cluster, "victim-l2", before)


def test_a_workload_whose_pods_cannot_be_created_is_reported(cluster, operator):
    """FailedCreate (issue 11, item 9): Pod Security `baseline` refuses the privileged
    server's Pods; the injection is in place but nothing will ever warm, and the status says why."""
    ns = namespace(cluster, "trust-failedcreate")
    cluster.kubectl_run("label", "namespace", ns, "pod-security.kubernetes.io/enforce=baseline", "--overwrite")
    dep = vllm_deployment("srv", ns, opt_in="warm-m")
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    apply(cluster, dep)
    apply(cluster, kernelwarmup("warm-m", ns, targets={"names": ["srv"]}))
    entry = wait_for("FailedCreate in the status", lambda: next(
        (t for t in ((get(cluster, "kernelwarmup", "warm-m", ns) or {}).get("status") or {}).get("targets") or []
         if t.get("reason") == "FailedCreate"), None), timeout_s=90)
    assert entry["injected"] and "PodSecurity" in entry["message"]
    degraded = next(c for c in get(cluster, "kernelwarmup", "warm-m", ns)["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "FailedCreate"
    assert [e for e in get_list(cluster, "events", ns) if e.get("reason") == "FailedCreate"
            and e["involvedObject"]["name"] == "warm-m"]
