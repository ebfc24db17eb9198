"""The Helm chart against the real local control plane: lint/template, server-side
dry-run, install, and the operator's integration scenario run with nothing but the
chart's ServiceAccount (a TokenRequest token): the RBAC is sufficient, and removing any
one of the tested rules makes the same operator fail with 403. Then upgrade and uninstall.

There is no kubelet, so the chart's own operator Pod stays Pending; the operator runs
here as a process, authenticated as that Pod would be.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import helmchart
import pytest
import yaml
from operator_process import OperatorProcess
from operator_support import (
    apply,
    get,
    get_list,
    kernelwarmup,
    namespace,
    replicasets,
    simulate_init_termination,
    template_of,
    vllm_deployment,
    wait_for,
)

from warmup_operator.core import names

pytestmark = pytest.mark.cluster
CHART = helmchart.CHART
NAMESPACED_VALUES = CHART / "ci" / "namespaced-values.yaml"
RESYNC_S = 1.0
RELEASE, RELEASE_NS = "kernel-warmup", "kernel-warmup-system"
POD_ENV = {"POD_NAMESPACE": RELEASE_NS}  # what the Deployment's downward API gives the operator
# What an operator that lacks a permission logs: the API server's RBAC denial (in a 403),
# or kopf's own fallback warning when it may not list/watch something.
DENIED = re.compile(r"cannot \w+ resource|Not enough permissions")


def denied(verb: str, resource: str) -> re.Pattern:
    """The RBAC denial of exactly this verb on this resource (quotes arrive escaped in JSON logs)."""
    return re.compile(rf"cannot {verb} resource \W*{re.escape(resource)}\W")


def denials(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if DENIED.search(line))[:4000]


@pytest.fixture(scope="module")
def tools(cluster) -> helmchart.Tools:
    return helmchart.Tools(helm=cluster.helm, kubectl=cluster.kubectl, kubeconfig=cluster.kubeconfig)


def render(tools, *args: str) -> list[dict]:
    out = tools.helm_run("template", RELEASE, str(CHART), "--namespace", RELEASE_NS, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def rules_of(docs: list[dict]) -> list[dict]:
    return [r for d in docs if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]]


def operator_as(tools, tmp: Path, release: str, release_ns: str, namespaces: tuple[str, ...] = ()) -> OperatorProcess:
    """The operator process, authenticated only as the release's ServiceAccount."""
    kubeconfig = helmchart.service_account_kubeconfig(tools, release_ns, helmchart.fullname(release), tmp / "sa-kubeconfig")
    # With the chart's leader election: the controller runs only once the Lease (the
    # chart's Role in the release namespace) is held.
    return OperatorProcess(kubeconfig, tmp / "operator.log", namespaces=namespaces, resync_seconds=RESYNC_S,
                           bootstrap_image="registry.local/kernel-warmup:test", extra_env={"POD_NAME": "chart-op"},
                           extra_args=helmchart.leader_flags(release, release_ns))


def can_i(tools, kubeconfig: Path, *args: str) -> bool:
    r = tools.kubectl_run(f"--kubeconfig={kubeconfig}", "auth", "can-i", *args, check=False)
    return r.stdout.strip() == "yes"


def clean_namespace(cluster, ns: str) -> None:
    """Delete this test's KernelWarmups, Deployments and their Pods, and wait until they are
    gone: a later cluster-wide operator (test_operator_e2e's) must not see their warmups."""
    cluster.kubectl_run("patch", "kernelwarmup", "kw", "-n", ns, "--type=merge", "-p",
                        '{"metadata":{"finalizers":null}}', check=False)
    cluster.kubectl_run("delete", "kernelwarmup,deployment,job", "--all", "-n", ns,
                        "--wait=true", "--timeout=60s", check=False)
    wait_for(f"no Pods left in {ns}", lambda: not get_list(cluster, "pods", ns), timeout_s=60)


def run_scenario(cluster, op: OperatorProcess, ns: str) -> None:
    """The operator's integration scenario: inject into a Deployment, exactly one rollout,
    status (and an Event) from a simulated warmer termination message, removal on delete."""
    namespace(cluster, ns)
    apply(cluster, vllm_deployment("llm", ns, labels={"warm": "yes"}))
    original = wait_for("first ReplicaSet", lambda: replicasets(cluster, ns, "llm") and template_of(cluster, "llm", ns))
    apply(cluster, kernelwarmup("kw", ns))
    injected = wait_for("injection", lambda: (t := template_of(cluster, "llm", ns))
                        and names.ANN_HASH in (t["metadata"].get("annotations") or {}) and t, timeout_s=30)
    assert [c["name"] for c in injected["spec"]["initContainers"]] == ["fetch-model", *names.INIT_CONTAINERS]
    wait_for("second ReplicaSet", lambda: len(replicasets(cluster, ns, "llm")) == 2, timeout_s=30)
    pod = wait_for("a Pod with the warmer", lambda: next((
        p for p in get_list(cluster, "pods", ns)
        if (p["metadata"].get("annotations") or {}).get(names.ANN_INJECTED_BY) == "kw"), None), timeout_s=30)

    from kernel_warmer.report import TritonCounts, WarmupSummary
    summary = WarmupSummary(status="ok", seconds=7.5, cache_key="k", triton=TritonCounts(compiled=2, hit=0),
                            flashinfer={"status": "ok", "tuned": 1}).compact_json()
    simulate_init_termination(cluster, pod, summary)
    lw = wait_for("lastWarmup in status", lambda: ((get(cluster, "kernelwarmup", "kw", ns) or {}).get("status") or {})
                  .get("lastWarmup"), timeout_s=30)
    assert lw["succeeded"] is True and lw["pod"] == pod["metadata"]["name"] and lw["seconds"] == 7.5
    wait_for("WarmupSucceeded event", lambda: [e for e in get_list(cluster, "events", ns)
                                               if e.get("reason") == "WarmupSucceeded"], timeout_s=30)
    time.sleep(3 * RESYNC_S)  # same hash, no patch: still one rollout after resyncs
    assert len(replicasets(cluster, ns, "llm")) == 2

    cluster.kubectl_run("delete", "kernelwarmup", "kw", "-n", ns, "--wait=true", "--timeout=60s")
    restored = wait_for("removal", lambda: (t := template_of(cluster, "llm", ns))
                        and names.ANN_HASH not in (t["metadata"].get("annotations") or {}) and t, timeout_s=30)
    assert restored == original
    assert get(cluster, "kernelwarmup", "kw", ns) is None  # finalizer removed by the operator
    assert op.healthy()


# --- static checks -------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, NAMESPACED_VALUES], ids=["cluster-scope", "namespaced"])
def test_lint_and_template(tools, values):
    extra = ["-f", str(values)] if values else []
    lint = tools.helm_run("lint", "--strict", str(CHART), *extra)
    assert "0 chart(s) failed" in lint.stdout, lint.stdout
    docs = render(tools, *extra)
    kinds = sorted(d["kind"] for d in docs)
    rules = rules_of(docs)
    for r in rules:  # least privilege: nothing by wildcard
        assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"], r
    assert not any(r.get("resources") == ["secrets"] or "secrets" in r["resources"] for r in rules)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert c["livenessProbe"]["httpGet"] == c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in c["ports"]
    assert "--liveness=http://0.0.0.0:8081/healthz" in c["args"] and c["resources"]["requests"]
    # The args parse with the operator's own CLI (no flag the operator does not have).
    from warmup_operator.config import OperatorConfig
    parsed = OperatorConfig.from_args(c["args"], POD_ENV)
    assert parsed.bootstrap_image == c["image"] and parsed.metrics_port == 9090
    assert parsed.leader.enabled and parsed.leader.lease_name == helmchart.fullname(RELEASE)
    assert {e["name"] for e in c["env"]} >= {"POD_NAMESPACE", "POD_NAME"}
    # Two replicas on two nodes when possible, and a drain leaves one.
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert anti["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": dep["spec"]["selector"]}
    lease_role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader"))
    assert lease_role["metadata"]["namespace"] == RELEASE_NS
    assert {v for r in lease_role["rules"] for v in r["verbs"]} == {"create", "get", "update"}
    svc = next(d for d in docs if d["kind"] == "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    if values is None:
        assert parsed.namespaces == () and parsed.log_format == "json"
        assert kinds == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "Deployment",
                         "MutatingWebhookConfiguration", "PodDisruptionBudget", "Role", "RoleBinding", "Service",
                         "Service", "ServiceAccount"]
    else:
        assert parsed.namespaces == ("team-a", "team-b") and parsed.log_format == "plain"
        assert kinds == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "Deployment",
                         "MutatingWebhookConfiguration", "PodDisruptionBudget", "Role", "Role", "Role",
                         "RoleBinding", "RoleBinding", "RoleBinding", "Service", "Service", "ServiceAccount"]
        assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role") == [RELEASE_NS, "team-a", "team-b"]
        # The one ClusterRole grants only cluster-scoped reads, nothing namespaced.
        cr = next(d for d in docs if d["kind"] == "ClusterRole")
        assert {res for r in cr["rules"] for res in r["resources"]} == {"customresourcedefinitions", "namespaces", "nodes"}
        assert {v for r in cr["rules"] for v in r["verbs"]} <= {"get", "list", "watch"}


def test_values_reach_the_operator_flags(tools):
    docs = render(tools, "--set", "metrics.enabled=false", "--set", "warmer.bootstrapImage=reg.local/warm:1",
                  "--set", "operator.verbose=true", "--set", "operator.resyncSeconds=30", "--set", "image.tag=9.9.9")
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"] == ["kernel-warmup-webhook"]
    c = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    from warmup_operator.config import OperatorConfig
    parsed = OperatorConfig.from_args(c["args"], POD_ENV)
    assert parsed.metrics_port == 0 and parsed.verbose and parsed.bootstrap_image == "reg.local/warm:1"
    assert c["image"].endswith(":9.9.9") and "metrics" not in {p["name"] for p in c["ports"]}
    assert {"name": "KERNEL_WARMUP_RESYNC_SECONDS", "value": "30"} in c["env"]
    assert parsed.policy.hostpath_allowed == ("/var/cache/kernel-warmup",)


def test_an_empty_hostpath_list_allows_no_hostpath_cache(tools):
    """values.yaml: 'Empty: no hostPath caches' (no flag rendered fell back to the default folder)."""
    from warmup_operator.config import OperatorConfig
    docs = render(tools, "--set-json", "cache.hostPathAllowed=[]")
    c = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {**POD_ENV, **{e["name"]: e["value"] for e in c["env"] if "value" in e}}
    assert OperatorConfig.from_args(c["args"], env).policy.hostpath_allowed == ()


@pytest.mark.parametrize("values", [None, NAMESPACED_VALUES], ids=["cluster-scope", "namespaced"])
def test_the_charts_workload_kinds_are_the_operators(tools, values):
    """Issue 24 item 4: the RBAC and webhook rules range over the chart's one list of
    workload kinds, which must be core/kinds.KINDS (a new kind: its row there, the CRD's
    enum and the chart's list)."""
    from warmup_operator.core.kinds import KINDS

    wanted: dict[tuple[str, str], set] = {}
    for k in KINDS.values():
        wanted.setdefault((k.group, k.version), set()).add(k.plural)
    docs = render(tools, *(["-f", str(values)] if values else []), "--set", "webhook.enabled=true")
    rbac = {(r["apiGroups"][0], frozenset(r["resources"])) for r in rules_of(docs) if "patch" in r["verbs"]
            and r["apiGroups"][0] not in ("kernelwarmup.dev", "admissionregistration.k8s.io")}
    assert rbac == {(g, frozenset(p)) for (g, _), p in wanted.items()}
    hook = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["webhooks"][0]
    assert {(r["apiGroups"][0], r["apiVersions"][0]): set(r["resources"]) for r in hook["rules"]} == wanted


def test_webhook_manifests(tools):
    """The admission webhook: opted-in workloads only, never blocking, the operator's CA
    (get/patch on this one configuration) or cert-manager's, and off when disabled."""
    from warmup_operator.config import OperatorConfig
    from warmup_operator.core.trust import OPT_IN

    def parts(*args):
        docs = render(tools, *args)
        by_kind = {d["kind"]: d for d in docs}
        c = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
        return docs, by_kind, c, OperatorConfig.from_args(c["args"], env={**POD_ENV, "POD_IP": "10.0.0.9"})

    docs, by_kind, c, cfg = parts()
    hook = by_kind["MutatingWebhookConfiguration"]["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] <= 5 and hook["sideEffects"] == "None"
    assert hook["objectSelector"] == {"matchExpressions": [{"key": OPT_IN, "operator": "Exists"}]}
    assert "namespaceSelector" not in hook
    assert {(r["apiGroups"][0], res) for r in hook["rules"] for res in r["resources"]} == {
        ("apps", "deployments"), ("apps", "statefulsets"), ("leaderworkerset.x-k8s.io", "leaderworkersets")}
    assert all(r["operations"] == ["CREATE", "UPDATE"] for r in hook["rules"])
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == hook["clientConfig"]["service"]["name"])
    assert hook["clientConfig"]["service"]["path"] == "/inject" and svc["spec"]["ports"][0]["targetPort"] == "webhook"
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in c["ports"]
    assert cfg.webhook.port == 9443 and cfg.webhook.bind == "10.0.0.9"
    assert cfg.webhook.configuration == "kernel-warmup" and f"kernel-warmup-webhook.{RELEASE_NS}.svc" in cfg.webhook.cert_hosts
    webhook_rules = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]
                     if "mutatingwebhookconfigurations" in r["resources"]]
    assert webhook_rules == [{"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
                              "resourceNames": ["kernel-warmup"], "verbs": ["get", "patch"]}]

    docs, by_kind, c, cfg = parts("-f", str(NAMESPACED_VALUES))
    sel = by_kind["MutatingWebhookConfiguration"]["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]
    assert sel == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}

    docs, by_kind, c, cfg = parts("--set", "webhook.certificates=cert-manager")
    assert cfg.webhook.cert_dir == "/webhook-tls" and cfg.webhook.configuration == ""
    assert by_kind["MutatingWebhookConfiguration"]["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{RELEASE_NS}/kernel-warmup-webhook"}
    assert set(by_kind["Certificate"]["spec"]["dnsNames"]) == set(cfg.webhook.cert_hosts)
    assert not any("mutatingwebhookconfigurations" in r["resources"] for r in rules_of(docs))
    vol = next(v for v in by_kind["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "webhook-tls")
    assert vol["secret"]["secretName"] == by_kind["Certificate"]["spec"]["secretName"]

    docs, by_kind, c, cfg = parts("--set", "webhook.enabled=false")
    assert "MutatingWebhookConfiguration" not in by_kind and not cfg.webhook.enabled
    assert not any("mutatingwebhookconfigurations" in r["resources"] for r in rules_of(docs))


def test_bad_values_name_the_field(tools):
    r = tools.helm_run("template", str(CHART), "--set", "operator.logFormat=xml", check=False)
    assert r.returncode != 0 and "logFormat" in r.stderr, r.stderr
    r = tools.helm_run("template", str(CHART), "--set", "watchNamespaces={Team_A}", check=False)
    assert r.returncode != 0 and "watchNamespaces" in r.stderr, r.stderr


@pytest.mark.parametrize("values", [None, NAMESPACED_VALUES], ids=["cluster-scope", "namespaced"])
def test_rendered_manifests_pass_server_dry_run(cluster, tools, values):
    extra = ["-f", str(values)] if values else []
    for ns in (RELEASE_NS, "team-a", "team-b"):
        namespace(cluster, ns)
    manifest = tools.helm_run("template", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--include-crds", *extra).stdout
    out = tools.kubectl_run("apply", "--dry-run=server", "-f", "-", input=manifest).stdout
    n_docs = len([d for d in yaml.safe_load_all(manifest) if d])
    assert out.count("(server dry run)") == n_docs, out


# --- install, and the operator as the chart's ServiceAccount --------------------------------


@pytest.fixture(scope="module")
def release(cluster, tools):
    """The chart installed cluster-wide (the CRD from crds/ with it)."""
    helmchart.install(tools, RELEASE, RELEASE_NS)
    assert get(cluster, "crd", helmchart.CRD_NAME, "") is not None
    return RELEASE


def test_cluster_scope_rbac_runs_the_operator_scenario(cluster, tools, release, tmp_path):
    op = operator_as(tools, tmp_path, release, RELEASE_NS)
    whoami = tools.kubectl_run(f"--kubeconfig={op.kubeconfig}", "auth", "whoami", "-o", "json").stdout
    assert json.loads(whoami)["status"]["userInfo"]["username"] == f"system:serviceaccount:{RELEASE_NS}:{helmchart.fullname(release)}"
    # No admin rights: nothing beyond what the operator uses.
    for denied in (["delete", "deployments", "-A"], ["create", "deployments", "-n", "default"], ["get", "secrets", "-A"],
                   ["update", "kernelwarmups", "-A"], ["delete", "pods", "-A"], ["list", "namespaces"], ["*", "*"]):
        assert not can_i(tools, op.kubeconfig, *denied), denied
    try:
        with op:
            run_scenario(cluster, op, "chart-cluster-scope")
    finally:
        clean_namespace(cluster, "chart-cluster-scope")
    log = op.log_path.read_text()
    assert not DENIED.search(log), denials(log)


PREWARM_CACHE = {"persistentVolumeClaim": {"claimName": "kernel-cache"}}


def prewarm_claim(cluster, ns: str) -> None:
    apply(cluster, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "kernel-cache", "namespace": ns},
                    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}})


def test_cluster_scope_rbac_runs_the_prewarm_scenario(cluster, tools, release, tmp_path):
    """Every Job verb the chart grants, used as its ServiceAccount: list/watch/create (the
    Job), then delete (superseded by a change, and the rest when the KernelWarmup goes)."""
    from fake_kubelet import pod_finished
    ns = namespace(cluster, "chart-prewarm")
    op = operator_as(tools, tmp_path, release, RELEASE_NS)
    prewarm_claim(cluster, ns)
    jobs = lambda: get_list(cluster, "jobs", ns, "-l", names.LABEL_PREWARM_CR)  # noqa: E731
    try:
        with op:
            apply(cluster, vllm_deployment("llm", ns, labels={"warm": "yes"}))
            apply(cluster, kernelwarmup("kw", ns, cache=PREWARM_CACHE))
            first = wait_for("a prewarm Job", lambda: jobs(), timeout_s=30)[0]["metadata"]["name"]
            apply(cluster, kernelwarmup("kw", ns, cache=PREWARM_CACHE, timeoutSeconds=900))
            job = wait_for("the superseding Job", lambda: [j for j in jobs() if j["metadata"]["name"] != first]
                           and len(jobs()) == 1 and jobs()[0], timeout_s=30)["metadata"]["name"]
            pod = wait_for("its Pod", lambda: get_list(cluster, "pods", ns, "-l", f"{names.LABEL_JOB_NAME}={job}"))[0]
            cluster.kubectl_run("patch", "pod", pod["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge",
                                "-p", json.dumps(pod_finished(pod, names.WARMER_CONTAINER, '{"status": "ok"}')))
            wait_for("injection after the Job", lambda: names.ANN_HASH in (template_of(cluster, "llm", ns)["metadata"]
                                                                            .get("annotations") or {}), timeout_s=30)
            cluster.kubectl_run("delete", "kernelwarmup", "kw", "-n", ns, "--wait=true", "--timeout=60s")
            wait_for("no Job left", lambda: not jobs(), timeout_s=30)
    finally:
        clean_namespace(cluster, ns)
    log = op.log_path.read_text()
    assert not DENIED.search(log), denials(log)


def test_namespaced_scope_rbac_runs_the_operator_scenario(cluster, tools, release, tmp_path):
    watched, other = namespace(cluster, "chart-team-a"), namespace(cluster, "chart-team-b")
    rel, rel_ns = "kw-team", "kw-team-system"
    helmchart.install(tools, rel, rel_ns, "--set", f"watchNamespaces={{{watched}}}")
    op = operator_as(tools, tmp_path, rel, rel_ns, namespaces=(watched,))
    assert can_i(tools, op.kubeconfig, "patch", "deployments", "-n", watched)
    assert not can_i(tools, op.kubeconfig, "patch", "deployments", "-n", other)
    assert not can_i(tools, op.kubeconfig, "list", "pods", "-A")
    # A workload and a KernelWarmup outside the watched namespace: never touched.
    apply(cluster, vllm_deployment("outside", other, labels={"warm": "yes"}))
    apply(cluster, kernelwarmup("kw", other))
    try:
        with op:
            run_scenario(cluster, op, watched)
            assert names.ANN_HASH not in (template_of(cluster, "outside", other)["metadata"].get("annotations") or {})
            assert not (get(cluster, "kernelwarmup", "kw", other)["metadata"].get("finalizers"))
        log = op.log_path.read_text()
        assert not DENIED.search(log), denials(log)
    finally:
        clean_namespace(cluster, watched)
        clean_namespace(cluster, other)
        tools.helm_run("uninstall", rel, "--namespace", rel_ns, "--wait", check=False)


def _no_injection(cluster, ns: str, op: OperatorProcess) -> None:
    time.sleep(2 * RESYNC_S)
    assert names.ANN_HASH not in (template_of(cluster, "llm", ns)["metadata"].get("annotations") or {})
    assert len(replicasets(cluster, ns, "llm")) == 1  # no rollout happened


def _no_finalizer(cluster, ns: str, op: OperatorProcess) -> None:
    time.sleep(2 * RESYNC_S)
    assert not get(cluster, "kernelwarmup", "kw", ns)["metadata"].get("finalizers")


def _no_events(cluster, ns: str, op: OperatorProcess) -> None:
    time.sleep(2 * RESYNC_S)
    mine = [e for e in get_list(cluster, "events", ns) if e["involvedObject"].get("kind") == "KernelWarmup"]
    assert not mine, mine


def _no_status(cluster, ns: str, op: OperatorProcess) -> None:
    wait_for("injection", lambda: names.ANN_HASH in (template_of(cluster, "llm", ns)["metadata"].get("annotations") or {}))
    time.sleep(3 * RESYNC_S)
    assert not get(cluster, "kernelwarmup", "kw", ns).get("status")


MISSING = [
    # (scope, ClusterRole name suffix, apiGroup, resource, verb) to take away, and what else must not happen.
    pytest.param("cluster", "", "apps", "deployments", "patch", _no_injection, id="deployments-patch"),
    pytest.param("cluster", "", "apps", "deployments", "get", _no_injection, id="deployments-get"),
    pytest.param("cluster", "", "kernelwarmup.dev", "kernelwarmups/status", "patch", _no_status, id="kernelwarmups-status-patch"),
    pytest.param("cluster", "", "kernelwarmup.dev", "kernelwarmups", "patch", _no_finalizer, id="kernelwarmups-patch"),
    pytest.param("cluster", "", "", "events", "create", _no_events, id="events-create"),
    pytest.param("cluster", "", "", "pods", "watch", None, id="pods-watch"),
    pytest.param("cluster", "", "apiextensions.k8s.io", "customresourcedefinitions", "watch", None, id="crds-watch"),
    pytest.param("namespaced", "-cluster-read", "", "namespaces", "list", None, id="namespaced-namespaces-list"),
    pytest.param("cluster", "", "batch", "jobs", "create", _no_injection, id="jobs-create"),
    pytest.param("cluster", "", "batch", "jobs", "list", _no_injection, id="jobs-list"),
]
# The KernelWarmup each case applies: a shared cache where the case is about prewarm Jobs.
KW_SPEC = {"jobs": {"cache": PREWARM_CACHE, "failurePolicy": "Fail"}}


@pytest.mark.parametrize("scope,suffix,group,resource,verb,also", MISSING)
def test_a_missing_permission_fails_the_operator(cluster, tools, release, tmp_path, scope, suffix, group, resource, verb, also):
    """The chart with one verb taken out of its ClusterRole: the operator, run as its
    ServiceAccount, is denied (a 403 or kopf's permission warning in its log), and the
    scenario step that needs the verb does not happen."""
    ns = namespace(cluster, f"chart-no-{resource.replace('/', '-')}-{verb}"[:63])
    rel, rel_ns = "kw-missing", "kw-missing-system"
    helmchart.install(tools, rel, rel_ns, *(["--set", f"watchNamespaces={{{ns}}}"] if scope == "namespaced" else []))
    name = helmchart.fullname(rel) + suffix
    role = json.loads(tools.kubectl_run("get", "clusterrole", name, "-o", "json").stdout)
    hit = [r for r in role["rules"] if group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]]
    assert len(hit) == 1, f"the chart should grant {verb} on {resource} exactly once: {role['rules']}"
    hit[0]["verbs"].remove(verb)
    role["rules"] = [r for r in role["rules"] if r["verbs"]]
    tools.kubectl_run("replace", "-f", "-", input=json.dumps(role))
    op = operator_as(tools, tmp_path, rel, rel_ns, namespaces=(ns,) if scope == "namespaced" else ())
    res, _, sub = resource.partition("/")
    assert not can_i(tools, op.kubeconfig, verb, f"{res}.{group}" if group else res,
                     *(["--subresource", sub] if sub else []), "-n", ns)
    try:
        with op:
            apply(cluster, vllm_deployment("llm", ns, labels={"warm": "yes"}))
            if resource in KW_SPEC:
                prewarm_claim(cluster, ns)
            apply(cluster, kernelwarmup("kw", ns, **KW_SPEC.get(resource, {})))
            wait_for(f"the denial of {verb} {resource} in the operator's log",
                     lambda: denied(verb, resource).search(op.log_path.read_text()), timeout_s=30)
            if also is not None:
                also(cluster, ns, op)
    finally:
        clean_namespace(cluster, ns)  # the operator is stopped: its finalizer is dropped
        tools.helm_run("uninstall", rel, "--namespace", rel_ns, "--wait", check=False)
        print(f"---- operator log ({name} without {verb} {resource}): denials ----\n" + denials(op.log_path.read_text()))


# --- upgrade and uninstall (last: it removes the release) ------------------------------------


def test_upgrade_with_changed_values_then_uninstall_keeps_the_crd(cluster, tools, release):
    fullname = helmchart.fullname(release)
    up_ns = namespace(cluster, "chart-upgraded")
    tools.helm_run("upgrade", release, str(CHART), "--namespace", RELEASE_NS, "--reuse-values",
                   "--set", "operator.logFormat=plain", "--set", "resources.limits.memory=256Mi",
                   "--set", f"watchNamespaces={{{up_ns}}}")
    dep = get(cluster, "deployment", fullname, RELEASE_NS)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert "--log-format=plain" in c["args"] and f"--namespace={up_ns}" in c["args"]
    assert c["resources"]["limits"]["memory"] == "256Mi"
    # The scope change swapped the cluster-wide rules for a Role in the watched namespace.
    assert get(cluster, "role", fullname, up_ns) is not None
    assert get(cluster, "clusterrolebinding", fullname, "") is None
    assert get(cluster, "clusterrolebinding", f"{fullname}-cluster-read", "") is not None
    history = json.loads(tools.helm_run("history", release, "--namespace", RELEASE_NS, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2] and history[-1]["status"] == "deployed"

    # A KernelWarmup left behind (no operator runs now, so no finalizer) outlives the release.
    keep_ns = namespace(cluster, "chart-kept")
    apply(cluster, kernelwarmup("kept", keep_ns))
    tools.helm_run("uninstall", release, "--namespace", RELEASE_NS, "--wait")
    for kind, name, ns in (("deployment", fullname, RELEASE_NS), ("serviceaccount", fullname, RELEASE_NS),
                           ("service", f"{fullname}-metrics", RELEASE_NS), ("role", fullname, up_ns),
                           ("clusterrole", f"{fullname}-cluster-read", "")):
        assert get(cluster, kind, name, ns) is None, f"{kind}/{name} survived helm uninstall"
    assert get(cluster, "crd", helmchart.CRD_NAME, "") is not None, "helm uninstall must keep the CRD (crds/)"
    assert get(cluster, "kernelwarmup", "kept", keep_ns) is not None
    cluster.kubectl_run("delete", "kernelwarmup", "kept", "-n", keep_ns)
