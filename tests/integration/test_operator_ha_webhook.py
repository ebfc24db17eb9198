"""Every replica serves the admission webhook, the standby too (issues 18 and 13).

Two operator processes with the chart's leader election and webhook flags, as the chart's
ServiceAccount. The chart's MutatingWebhookConfiguration is pointed at the *standby*: a
user's `kubectl set image` is injected in that same write by the replica that does not run
the controller (one new ReplicaSet, the warmer on the new image), from its own fresh
indexes. Each replica publishes one CA (the leader runs kopf twice but starts one webhook
server), and the leader's process serves on its own port.
"""

from __future__ import annotations

import base64
import json
import time

import helmchart
import pytest
from operator_process import OperatorProcess, free_port
from operator_support import apply, get, get_list, kernelwarmup, namespace, replicasets, vllm_deployment, wait_for

from warmup_operator.core import names
from warmup_operator.core.trust import OPT_IN

pytestmark = pytest.mark.cluster
REL, REL_NS, NS = "kw-ha-hook", "kw-ha-hook-system", "ha-webhook"
CONFIG = helmchart.fullname(REL)
RESYNC_S = 2.0


def ca_count(cluster) -> int:
    conf = get(cluster, "mutatingwebhookconfiguration", CONFIG, "") or {"webhooks": [{}]}
    bundle = base64.b64decode(conf["webhooks"][0].get("clientConfig", {}).get("caBundle") or "")
    return bundle.count(b"BEGIN CERTIFICATE")


def point_at(tools, port: int) -> None:
    """The chart's configuration, called at https://127.0.0.1:<port>/inject (no Service network here)."""
    conf = json.loads(tools.kubectl_run("get", "mutatingwebhookconfiguration", CONFIG, "-o", "json").stdout)
    ops = [{"op": "replace", "path": f"/webhooks/{i}/clientConfig", "value": {
        "url": f"https://127.0.0.1:{port}/inject", "caBundle": hook["clientConfig"].get("caBundle", "")}}
        for i, hook in enumerate(conf["webhooks"])]
    tools.kubectl_run("patch", "mutatingwebhookconfiguration", CONFIG, "--type=json", "-p", json.dumps(ops))


def replica(kubeconfig, tmp_path, name: str, port: int) -> OperatorProcess:
    return OperatorProcess(kubeconfig, tmp_path / f"{name}.log", namespaces=(NS,), resync_seconds=RESYNC_S,
                           bootstrap_image="registry.local/kernel-warmup:test", extra_env={"POD_NAME": name},
                           extra_args=(*helmchart.leader_flags(REL, REL_NS), "--webhook-port", str(port),
                                       "--webhook-bind", "127.0.0.1", "--webhook-configuration", CONFIG))


def after_admission(cluster) -> list[dict]:
    return [e for e in get_list(cluster, "events", NS) if e.get("reason") == "InjectedAfterAdmission"]


def holder(cluster) -> str:
    return ((get(cluster, "lease", CONFIG, REL_NS) or {}).get("spec") or {}).get("holderIdentity") or ""


def test_the_standby_serves_the_webhook(cluster, tmp_path):
    tools = helmchart.Tools(helm=cluster.helm, kubectl=cluster.kubectl, kubeconfig=cluster.kubeconfig)
    namespace(cluster, NS)
    helmchart.install(tools, REL, REL_NS, "--set", f"watchNamespaces={{{NS}}}")
    kubeconfig = helmchart.service_account_kubeconfig(tools, REL_NS, CONFIG, tmp_path / "sa-kubeconfig")
    ports = {"a": free_port(), "b": free_port()}
    a = replica(kubeconfig, tmp_path, "replica-a", ports["a"]).start()
    b = None
    try:
        wait_for("replica-a to lead", lambda: holder(cluster).startswith("replica-a_"), timeout_s=60)
        b = replica(kubeconfig, tmp_path, "replica-b", ports["b"]).start()
        wait_for("both replicas' CAs in the caBundle", lambda: ca_count(cluster) >= 2, timeout_s=60)
        point_at(tools, ports["b"])  # the API server now calls the standby only
        dep = vllm_deployment("llm", NS, labels={"app": "llm", "warm": "yes", OPT_IN: "kw"}, opt_in=None)
        apply(cluster, dep)
        apply(cluster, kernelwarmup("kw", NS))
        wait_for("injection", lambda: names.ANN_HASH in ((get(cluster, "deployment", "llm", NS)["spec"]["template"]
                                                          ["metadata"].get("annotations")) or {}), timeout_s=60)
        wait_for("the injected rollout", lambda: len(replicasets(cluster, NS, "llm")) == 2, timeout_s=30)

        repairs_before = len(after_admission(cluster))
        cluster.kubectl_run("set", "image", "deployment/llm", "-n", NS, "vllm=vllm/vllm-openai:v9.9.9")
        time.sleep(3 * RESYNC_S)  # a controller repair would add one more ReplicaSet
        spec = get(cluster, "deployment", "llm", NS)["spec"]["template"]["spec"]
        warmer = next(c for c in spec["initContainers"] if c["name"] == names.WARMER_CONTAINER)
        assert warmer["image"] == "vllm/vllm-openai:v9.9.9"
        new = [rs for rs in replicasets(cluster, NS, "llm")
               if rs["spec"]["template"]["spec"]["containers"][0]["image"] == "vllm/vllm-openai:v9.9.9"]
        assert len(replicasets(cluster, NS, "llm")) == 3 and len(new) == 1
        new_warmer = next(c for c in new[0]["spec"]["template"]["spec"]["initContainers"]
                          if c["name"] == names.WARMER_CONTAINER)
        assert new_warmer["image"] == "vllm/vllm-openai:v9.9.9"  # injected in the user's own write

        assert holder(cluster).startswith("replica-a_")  # b answered as the standby
        b_log = b.log_path.read_text()
        assert "admission of Deployment" in b_log and "Injected Deployment" not in b_log
        assert len(after_admission(cluster)) == repairs_before  # no write got through uninjected
        # One CA per process: the leader's second kopf (the controller) made none of its own.
        assert ca_count(cluster) == 2
        assert a.healthy() and "address already in use" not in a.log_path.read_text()
    finally:
        for op in (a, b):
            if op is not None:
                op.stop()
                print(f"---- {op.log_path.name} (tail) ----\n{op.log_tail(12)}")
        cluster.kubectl_run("delete", "kernelwarmup", "kw", "-n", NS, "--wait=false", check=False)
        cluster.kubectl_run("patch", "kernelwarmup", "kw", "-n", NS, "--type=merge", "-p",
                            '{"metadata":{"finalizers":null}}', check=False)
        tools.helm_run("uninstall", REL, "--namespace", REL_NS, "--wait", check=False)
