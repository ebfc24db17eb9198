"""The admission webhook against the real API server (issue 13): the kube-apiserver calls
the operator's webhook on loopback through the chart's own MutatingWebhookConfiguration
(rendered by helm; only its clientConfig points at 127.0.0.1 instead of the Service), with
the certificate the operator made and the caBundle it filled in.

One new ReplicaSet / ControllerRevision / LeaderWorkerSet write per user change, the warmer
image equal to the serving image each time; webhook and controller give identical
templates; removal after a webhook-injected write restores the user's template; a user's
re-apply rolls out nothing; a KernelWarmup change rolls out once; the operator down during
an edit: the write passes, the controller repairs it after the restart and says so."""

from __future__ import annotations

import base64
import copy
import json
import time

import helmchart
import pytest
from operator_process import OperatorProcess, free_port
from operator_support import (
    LWS_TEMPLATES,
    apply,
    events,
    get,
    get_list,
    install_lws_crd,
    kernelwarmup,
    namespace,
    replicasets,
    vllm_deployment,
    wait_for,
)

from warmup_operator.core import names
from warmup_operator.core.trust import OPT_IN

pytestmark = pytest.mark.cluster
RESYNC_S = 1.0


RELEASE, RELEASE_NS = "kw-hook", "kw-hook-system"
CONFIG = helmchart.fullname(RELEASE)  # the chart's MutatingWebhookConfiguration


def point_at_loopback(tools, port: int) -> None:
    """The chart's configuration, called at https://127.0.0.1:<port>/inject instead of its
    Service (the local control plane has no Service network)."""
    conf = json.loads(tools.kubectl_run("get", "mutatingwebhookconfiguration", CONFIG, "-o", "json").stdout)
    ops = []
    for i, hook in enumerate(conf["webhooks"]):
        assert hook["clientConfig"]["service"]["path"] == "/inject"
        ops.append({"op": "replace", "path": f"/webhooks/{i}/clientConfig",
                    "value": {"url": f"https://127.0.0.1:{port}/inject"}})
    tools.kubectl_run("patch", "mutatingwebhookconfiguration", CONFIG, "--type=json", "-p", json.dumps(ops))


def ca_bundle(cluster) -> bytes:
    conf = get(cluster, "mutatingwebhookconfiguration", CONFIG, "") or {"webhooks": [{}]}
    return base64.b64decode(conf["webhooks"][0].get("clientConfig", {}).get("caBundle") or "")


def start_operator(cluster, hook: dict) -> OperatorProcess:
    """The operator as the chart's ServiceAccount (its RBAC, nothing more), serving the webhook."""
    before = ca_bundle(cluster)
    op = OperatorProcess(hook["kubeconfig"], hook["dir"] / "operator.log", resync_seconds=RESYNC_S,
                         bootstrap_image="registry.local/kernel-warmup:test",
                         extra_args=("--webhook-port", str(hook["port"]), "--webhook-bind", "127.0.0.1",
                                     "--webhook-configuration", CONFIG))
    op.start()
    wait_for("the operator's CA in the caBundle", lambda: (b := ca_bundle(cluster)) and b != before, timeout_s=30)
    return op


@pytest.fixture(scope="module")
def hook(cluster, tmp_path_factory):
    """The chart installed (webhook on), its configuration pointed at this module's
    operator, which runs with the chart ServiceAccount's token."""
    tools = helmchart.Tools(helm=cluster.helm, kubectl=cluster.kubectl, kubeconfig=cluster.kubeconfig)
    helmchart.install(tools, RELEASE, RELEASE_NS)
    install_lws_crd(cluster)
    state = {"port": free_port(), "dir": tmp_path_factory.mktemp("operator-webhook")}
    point_at_loopback(tools, state["port"])
    state["kubeconfig"] = helmchart.service_account_kubeconfig(tools, RELEASE_NS, CONFIG, state["dir"] / "sa-kubeconfig")
    state["op"] = start_operator(cluster, state)
    yield state
    state["op"].stop()
    log = state["op"].log_tail(80)
    print("---- operator log (tail) ----\n" + log)
    tools.helm_run("uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait", check=False)


def test_the_chart_serviceaccount_runs_the_webhook(cluster, hook):
    """Who the operator is (its own writes are left alone), the caBundle it filled, and no
    denial in its log: the chart's RBAC is enough for the webhook."""
    log = hook["op"].log_path.read_text()
    assert "cannot ask the API who the operator is" not in log
    assert "cannot set the caBundle" not in log and "cannot patch resource" not in log
    assert ca_bundle(cluster).count(b"BEGIN CERTIFICATE") >= 1


# --- workloads ---------------------------------------------------------------------------


def deployment(name: str, ns: str, opt_in: str = "label", pod_label: str = "") -> dict:
    """examples/vllm-deployment.yaml (plus a user init container and PYTHONPATH), opted into
    KernelWarmup kw by label (the webhook's selector) or by annotation only."""
    doc = vllm_deployment(name, ns, labels={"app": name, "warm": "yes"}, opt_in="kw" if opt_in == "annotation" else None)
    if opt_in == "label":
        doc["metadata"]["labels"][OPT_IN] = "kw"
    if pod_label:
        doc["spec"]["selector"] = {"matchLabels": {"pod": pod_label}}
        doc["spec"]["template"]["metadata"]["labels"] = {"pod": pod_label}
    return doc


def statefulset(name: str, ns: str, **kw) -> dict:
    doc = deployment(name, ns, **kw)
    doc["kind"] = "StatefulSet"
    doc["spec"].pop("strategy", None)
    doc["spec"]["serviceName"] = name
    return doc


def leaderworkerset(name: str, ns: str, **kw) -> dict:
    base = deployment(name, ns, **kw)
    leader, worker = copy.deepcopy(base["spec"]["template"]), copy.deepcopy(base["spec"]["template"])
    leader["spec"]["containers"][0]["env"].append({"name": "ROLE", "value": "leader"})
    return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": base["metadata"],
            "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2, "leaderTemplate": leader,
                                                             "workerTemplate": worker}}}


BUILD = {"deployment": deployment, "statefulset": statefulset, "leaderworkerset": leaderworkerset}


def pod_templates(obj: dict) -> list[dict]:
    if obj["kind"] == "LeaderWorkerSet":
        return [obj["spec"]["leaderWorkerTemplate"][t] for t in LWS_TEMPLATES]
    return [obj["spec"]["template"]]


def by_name(items, name):
    return next((i for i in items or [] if i["name"] == name), None)


def warmer_matches_server(template: dict) -> bool:
    """The template is injected, and its warmer runs in the serving container's image."""
    spec = template["spec"]
    warmer = by_name(spec.get("initContainers"), names.WARMER_CONTAINER)
    return warmer is not None and warmer["image"] == by_name(spec["containers"], "vllm")["image"]


def injected(cluster, kind: str, name: str, ns: str):
    obj = get(cluster, kind, name, ns)
    return obj if obj and all(warmer_matches_server(t) for t in pod_templates(obj)) else None


def rollouts(cluster, kind: str, name: str, ns: str) -> int:
    """What one rollout adds: a ReplicaSet (Deployment), a ControllerRevision
    (StatefulSet), a write of the object (LeaderWorkerSet: no controller runs here)."""
    if kind == "deployment":
        return len(replicasets(cluster, ns, name))
    if kind == "statefulset":
        return len([r for r in get_list(cluster, "controllerrevisions", ns)
                    if any(o.get("name") == name for o in r["metadata"].get("ownerReferences") or [])])
    return get(cluster, kind, name, ns)["metadata"]["generation"]


def steady(cluster, kind: str, name: str, ns: str, expected: int) -> int:
    """The rollout count once it reached ``expected`` and stayed there for a few resyncs
    (an operator that patched after the user's write would add one more)."""
    wait_for(f"{kind}/{name}: {expected} rollouts", lambda: rollouts(cluster, kind, name, ns) >= expected, timeout_s=30)
    time.sleep(4 * RESYNC_S)
    return rollouts(cluster, kind, name, ns)


def reconciled_kernelwarmup(cluster, ns: str, **spec) -> dict:
    """KernelWarmup kw, applied, once its status speaks for its current generation."""
    apply(cluster, kernelwarmup("kw", ns, **spec))

    def done():
        kw = get(cluster, "kernelwarmup", "kw", ns)
        return kw if (kw.get("status") or {}).get("observedGeneration") == kw["metadata"]["generation"] else None
    return wait_for("the KernelWarmup's status", done, timeout_s=30)


# --- kubectl's commands, and the same writes for a LeaderWorkerSet ------------------------
# kubectl set / rollout restart know only built-in kinds; for a LeaderWorkerSet the same
# change is one JSON patch of both templates (as the LWS's owner would write it).


def _lws_patch(cluster, name: str, ns: str, ops_per_template) -> None:
    ops = [op for t in LWS_TEMPLATES for op in ops_per_template(f"/spec/leaderWorkerTemplate/{t}")]
    cluster.kubectl_run("patch", "leaderworkerset", name, "-n", ns, "--type=json", "-p", json.dumps(ops))


def user_change(cluster, kind: str, name: str, ns: str, change: str, n: int) -> None:
    ref = f"{kind}/{name}"
    if kind != "leaderworkerset" or change == "scale":
        cmd = {"image": ["set", "image", ref, f"vllm=vllm/vllm-openai:v0.11.{n}"],
               "resources": ["set", "resources", ref, "-c", "vllm", f"--requests=cpu={n + 1}"],
               "env": ["set", "env", ref, "-c", "vllm", f"EDIT={n}"],
               "scale": ["scale", ref, f"--replicas={n + 1}"],
               "restart": ["rollout", "restart", ref]}[change]
        cluster.kubectl_run(*cmd, "-n", ns)
        return
    c0 = "/spec/containers/0"
    _lws_patch(cluster, name, ns, {
        "image": lambda t: [{"op": "replace", "path": f"{t}{c0}/image", "value": f"vllm/vllm-openai:v0.11.{n}"}],
        "resources": lambda t: [{"op": "add", "path": f"{t}{c0}/resources/requests", "value": {"cpu": str(n + 1)}}],
        "env": lambda t: [{"op": "add", "path": f"{t}{c0}/env/-", "value": {"name": "EDIT", "value": str(n)}}],
        "restart": lambda t: [{"op": "add", "path": f"{t}/metadata/annotations/kubectl.kubernetes.io~1restartedAt",
                               "value": f"2026-11-27T00:00:0{n}Z"}],
    }[change])


CHANGES = [("image", 1), ("resources", 1), ("env", 1), ("scale", 0), ("restart", 1)]


@pytest.mark.parametrize("kind", ["deployment", "statefulset", "leaderworkerset"])
def test_one_rollout_per_user_change(cluster, hook, kind):
    """Injected at CREATE (the first rollout already has the warmer); then each user change
    adds exactly one rollout (a scale none: the template is unchanged), and in each the
    warmer runs in the serving container's current image."""
    ns = namespace(cluster, f"hook-rollouts-{kind[:5]}")
    reconciled_kernelwarmup(cluster, ns)
    apply(cluster, BUILD[kind]("llm", ns))
    obj = wait_for("injected at create", lambda: injected(cluster, kind, "llm", ns), timeout_s=30)
    assert obj["metadata"]["generation"] == 1, "the injection came in a second write"
    count = steady(cluster, kind, "llm", ns, 1)
    assert count == 1
    for n, (change, adds) in enumerate(CHANGES, start=2):
        user_change(cluster, kind, "llm", ns, change, n)
        expected = count + (1 if kind == "leaderworkerset" else adds)  # every LWS write is one generation
        assert steady(cluster, kind, "llm", ns, expected) == expected, f"{change}: more than one rollout"
        count = expected
        obj = get(cluster, kind, "llm", ns)
        for t in pod_templates(obj):
            assert warmer_matches_server(t), f"{change}: the warmer is not on the serving image"
        if change == "image":
            assert by_name(pod_templates(obj)[0]["spec"]["containers"], "vllm")["image"].endswith(f":v0.11.{n}")
        if change == "env":  # the warmer sees the server's env
            warmer = by_name(pod_templates(obj)[0]["spec"]["initContainers"], names.WARMER_CONTAINER)
            assert by_name(warmer["env"], "EDIT") == {"name": "EDIT", "value": str(n)}
    if kind == "deployment":  # every ReplicaSet's Pods got a warmer on their own serving image
        for rs in replicasets(cluster, ns, "llm"):
            assert warmer_matches_server(rs["spec"]["template"]), rs["metadata"]["name"]
    assert not events(cluster, ns, "InjectedAfterAdmission")


@pytest.mark.parametrize("kind", ["deployment", "statefulset", "leaderworkerset"])
def test_webhook_and_controller_give_identical_templates(cluster, hook, kind):
    """The same workload twice: opted in by label (the webhook injects it at CREATE) and by
    annotation only (outside the webhook's selector: the controller injects it afterwards,
    and says that this took a second rollout)."""
    ns = namespace(cluster, f"hook-same-{kind[:5]}")
    reconciled_kernelwarmup(cluster, ns)
    apply(cluster, BUILD[kind]("by-hook", ns, pod_label="same"))
    apply(cluster, BUILD[kind]("by-ctl", ns, opt_in="annotation", pod_label="same"))
    hooked = wait_for("webhook injection", lambda: injected(cluster, kind, "by-hook", ns), timeout_s=30)
    ctl = wait_for("controller injection", lambda: injected(cluster, kind, "by-ctl", ns), timeout_s=30)
    assert json.dumps(pod_templates(hooked), indent=1, sort_keys=True) == json.dumps(pod_templates(ctl), indent=1, sort_keys=True)
    assert (hooked["metadata"]["generation"], ctl["metadata"]["generation"]) == (1, 2)
    warning = wait_for("the controller's report", lambda: events(cluster, ns, "InjectedAfterAdmission"), timeout_s=30)
    assert {e["involvedObject"]["name"] for e in warning} >= {"by-ctl"}
    assert "by-hook" not in {e["involvedObject"]["name"] for e in warning}
    assert "annotation only" in warning[0]["message"]


def server_side_apply(cluster, obj: dict) -> None:
    r = cluster.kubectl_run("apply", "--server-side", "--field-manager=gitops", "-f", "-", input=json.dumps(obj),
                            check=False)
    assert r.returncode == 0, r.stderr  # no conflict: the injected fields are not the user's to fight over


def test_user_reapply_rolls_nothing_out_and_removal_restores_the_users_template(cluster, hook):
    """After a webhook-injected write the injected fields belong to no field manager; the
    controller adopts them before it removes them, so removal still gives back exactly the
    template the user wrote (a never-opted-in twin shows what the API stores for it). The
    user's own manifest applied again (client-side, and server-side as a GitOps tool
    would) rolls out nothing."""
    ns = namespace(cluster, "hook-removal")
    reconciled_kernelwarmup(cluster, ns)
    mine, gitops = deployment("llm", ns), deployment("gitops", ns)
    twin = deployment("twin", ns, opt_in="none")
    twin["metadata"]["labels"].pop("warm")
    apply(cluster, mine)
    server_side_apply(cluster, gitops)
    apply(cluster, twin)
    for name in ("llm", "gitops"):
        wait_for(f"{name} injected", lambda: injected(cluster, "deployment", name, ns), timeout_s=30)
        assert steady(cluster, "deployment", name, ns, 1) == 1
    apply(cluster, mine)  # kubectl apply (client-side) of the user's own manifest again
    server_side_apply(cluster, gitops)
    for name in ("llm", "gitops"):
        assert steady(cluster, "deployment", name, ns, 1) == 1, f"{name}: re-applying the user's manifest rolled out"
        assert injected(cluster, "deployment", name, ns)

    cluster.kubectl_run("delete", "kernelwarmup", "kw", "-n", ns, "--wait=true", "--timeout=60s")
    expected = get(cluster, "deployment", "twin", ns)["spec"]["template"]
    for name in ("llm", "gitops"):
        restored = wait_for(f"{name} restored", lambda: (d := get(cluster, "deployment", name, ns)) and names.ANN_HASH
                            not in (d["spec"]["template"]["metadata"].get("annotations") or {}) and d)["spec"]["template"]
        assert restored["metadata"]["labels"] == {"pod": name}
        assert {**restored, "metadata": expected["metadata"]} == expected, name
        assert steady(cluster, "deployment", name, ns, 2) == 2  # the removal's one rollout


def test_kernelwarmup_change_rolls_out_once(cluster, hook):
    ns = namespace(cluster, "hook-kw-change")
    reconciled_kernelwarmup(cluster, ns)
    apply(cluster, deployment("llm", ns))
    before = wait_for("injected", lambda: injected(cluster, "deployment", "llm", ns), timeout_s=30)
    assert steady(cluster, "deployment", "llm", ns, 1) == 1
    reconciled_kernelwarmup(cluster, ns, tensorParallelSize=2)
    after = wait_for("new hash", lambda: (d := injected(cluster, "deployment", "llm", ns))
                     and d["spec"]["template"]["metadata"]["annotations"][names.ANN_HASH]
                     != before["spec"]["template"]["metadata"]["annotations"][names.ANN_HASH] and d, timeout_s=30)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert steady(cluster, "deployment", "llm", ns, 2) == 2
    assert not events(cluster, ns, "InjectedAfterAdmission")


def test_operator_down_during_an_edit(cluster, hook):
    """The write passes (failurePolicy Ignore) with the warmer on the old image; after the
    restart the controller injects it, with a Warning and the status saying what happened;
    the next edit is atomic again. Last in the module: it restarts the operator."""
    ns = namespace(cluster, "hook-down")
    reconciled_kernelwarmup(cluster, ns)
    apply(cluster, deployment("llm", ns))
    wait_for("injected", lambda: injected(cluster, "deployment", "llm", ns), timeout_s=30)
    assert steady(cluster, "deployment", "llm", ns, 1) == 1
    hook["op"].stop()
    started = time.monotonic()
    user_change(cluster, "deployment", "llm", ns, "image", 7)
    assert time.monotonic() - started < 30
    stale = get(cluster, "deployment", "llm", ns)["spec"]["template"]
    assert by_name(stale["spec"]["containers"], "vllm")["image"].endswith(":v0.11.7")
    assert not warmer_matches_server(stale), "injected although the operator was down"
    hook["op"] = start_operator(cluster, hook)
    wait_for("repaired", lambda: injected(cluster, "deployment", "llm", ns), timeout_s=60)
    assert steady(cluster, "deployment", "llm", ns, 3) == 3  # the edit's rollout and the repair's
    warning = wait_for("Warning", lambda: events(cluster, ns, "InjectedAfterAdmission"), timeout_s=30)
    assert "written without injection" in warning[0]["message"]
    target = wait_for("status", lambda: next((t for t in (get(cluster, "kernelwarmup", "kw", ns).get("status") or {})
                                              .get("targets") or [] if t.get("reason") == "InjectedAfterAdmission"), None),
                      timeout_s=30)
    assert target["name"] == "llm" and target["injected"] is True and "operator down" in target["message"]
    user_change(cluster, "deployment", "llm", ns, "image", 8)
    assert steady(cluster, "deployment", "llm", ns, 4) == 4
    assert injected(cluster, "deployment", "llm", ns)


@pytest.mark.parametrize("verb", ["get", "patch"])
def test_each_webhook_verb_is_needed(cluster, hook, verb):
    """The chart grants get and patch on its one MutatingWebhookConfiguration and nothing
    else for the webhook; without either, the operator (as the chart's ServiceAccount) is
    denied and cannot put its CA into the caBundle."""
    name = f"{CONFIG}-webhook"
    role = json.loads(cluster.kubectl_run("get", "clusterrole", name, "-o", "json").stdout)
    assert role["rules"] == [{"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
                              "resourceNames": [CONFIG], "verbs": ["get", "patch"]}]
    cut = copy.deepcopy(role)
    cut["rules"][0]["verbs"].remove(verb)
    cluster.kubectl_run("replace", "-f", "-", input=json.dumps(cut))
    hook["op"].stop()
    before = ca_bundle(cluster)
    op = OperatorProcess(hook["kubeconfig"], hook["dir"] / f"operator-no-{verb}.log", resync_seconds=RESYNC_S,
                         extra_args=("--webhook-port", str(hook["port"]), "--webhook-bind", "127.0.0.1",
                                     "--webhook-configuration", CONFIG))
    try:
        with op:
            wait_for("the denial", lambda: "cannot set the caBundle" in op.log_path.read_text(), timeout_s=30)
            assert "403" in op.log_path.read_text()
            assert ca_bundle(cluster) == before
    finally:
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            role["metadata"].pop(key, None)
        cluster.kubectl_run("replace", "-f", "-", input=json.dumps(role))
        hook["op"] = start_operator(cluster, hook)


def test_a_pending_prewarm_is_not_bypassed_by_a_users_write(cluster, hook):
    """Issue 17's seam: with a shared cache, a user's write while the prewarm Job runs keeps
    what the user sent (no new hash), and the controller applies the hash after its Job,
    which is no missed admission."""
    from fake_kubelet import pod_finished
    ns = namespace(cluster, "hook-prewarm")
    apply(cluster, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "cache", "namespace": ns},
                    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}})
    apply(cluster, kernelwarmup("kw", ns, failurePolicy="Fail", cache={"persistentVolumeClaim": {"claimName": "cache"}}))
    apply(cluster, deployment("llm", ns))  # the webhook holds the injection: its prewarm has not passed
    jobs = lambda: get_list(cluster, "jobs", ns, "-l", names.LABEL_PREWARM_CR)  # noqa: E731
    first = wait_for("a prewarm Job", jobs, timeout_s=30)[0]["metadata"]["name"]
    assert not injected(cluster, "deployment", "llm", ns)
    user_change(cluster, "deployment", "llm", ns, "env", 1)  # a new template: a new hash, a new Job
    job = wait_for("the Job for the user's template", lambda: [j for j in jobs() if j["metadata"]["name"] != first]
                   and len(jobs()) == 1 and jobs()[0], timeout_s=30)
    time.sleep(3 * RESYNC_S)
    assert not injected(cluster, "deployment", "llm", ns) and rollouts(cluster, "deployment", "llm", ns) == 2
    name = job["metadata"]["name"]
    pod = wait_for("its Pod", lambda: get_list(cluster, "pods", ns, "-l", f"{names.LABEL_JOB_NAME}={name}"))[0]
    cluster.kubectl_run("patch", "pod", pod["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge",
                        "-p", json.dumps(pod_finished(pod, names.WARMER_CONTAINER, '{"status": "ok"}')))
    dep = wait_for("the injection after the Job", lambda: injected(cluster, "deployment", "llm", ns), timeout_s=30)
    assert dep["spec"]["template"]["metadata"]["annotations"][names.ANN_HASH] == \
        job["metadata"]["labels"][names.LABEL_PREWARM_HASH]
    assert steady(cluster, "deployment", "llm", ns, 3) == 3  # the user's change, then one rollout after the Job
    assert not events(cluster, ns, "InjectedAfterAdmission")
