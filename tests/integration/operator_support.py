"""Helpers shared by the operator's integration tests (real control plane)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import devcluster
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The LeaderWorkerSet CRD the local control plane serves, and its two Pod templates.
LWS_CRD = ROOT / "devcluster/crds/leaderworkersets.leaderworkerset.x-k8s.io.yaml"
LWS_TEMPLATES = ("leaderTemplate", "workerTemplate")
CRD = ROOT / "charts/kernel-warmup/crds/kernelwarmups.kernelwarmup.dev.yaml"


def running_operator(cluster, tmp_path_factory, **kwargs):
    """A module's operator on the test control plane (CRD installed first); its log tail is
    printed when the module ends. Use as a generator fixture: ``yield from``."""
    from operator_process import OperatorProcess

    install_crd(cluster)
    proc = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log",
                           bootstrap_image="registry.local/kernel-warmup:test", **kwargs)
    proc.start()
    yield proc
    proc.stop()
    print("---- operator log (tail) ----\n" + proc.log_tail(80))


def install_crd(cluster) -> None:
    cluster.kubectl_run("apply", "-f", str(CRD))
    devcluster.wait_crd_established(cluster.kubectl_run, "kernelwarmups.kernelwarmup.dev")


def install_lws_crd(cluster) -> None:
    cluster.kubectl_run("apply", "-f", str(LWS_CRD))
    devcluster.wait_crd_established(cluster.kubectl_run, "leaderworkersets.leaderworkerset.x-k8s.io")


def apply(cluster, obj: dict, *args: str):
    return cluster.kubectl_run("apply", "-f", "-", *args, input=json.dumps(obj))


def get(cluster, kind: str, name: str, ns: str, managed: bool = False) -> Optional[dict]:
    extra = ["--show-managed-fields"] if managed else []
    r = cluster.kubectl_run("get", kind, name, "-n", ns, "-o", "json", *extra, check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def get_list(cluster, kind: str, ns: str, *selector: str) -> list[dict]:
    r = cluster.kubectl_run("get", kind, "-n", ns, "-o", "json", *selector)
    return json.loads(r.stdout)["items"]


def events(cluster, ns: str, reason: str) -> list[dict]:
    return [e for e in get_list(cluster, "events", ns) if e.get("reason") == reason]


def wait_for(what: str, fn: Callable[[], Any], timeout_s: float = 60.0, poll_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def namespace(cluster, name: str) -> str:
    cluster.kubectl_run("create", "namespace", name, check=False)
    return name


def vllm_deployment(name: str, ns: str, labels: Optional[dict] = None, replicas: int = 1,
                    opt_in: Optional[str] = "kw") -> dict:
    """Like examples/vllm-deployment.yaml, plus a user init container and a user PYTHONPATH;
    opted into the KernelWarmup ``opt_in`` (None: not opted in)."""
    doc = yaml.safe_load((ROOT / "examples/vllm-deployment.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": ns, "labels": labels or {"app": name}}
    if opt_in:
        doc["metadata"]["annotations"] = {"kernelwarmup.dev/kernelwarmup": opt_in}
    doc["spec"]["replicas"] = replicas
    doc["spec"]["selector"] = {"matchLabels": {"pod": name}}
    doc["spec"]["template"]["metadata"]["labels"] = {"pod": name}
    spec = doc["spec"]["template"]["spec"]
    spec["initContainers"] = [{"name": "fetch-model", "image": "busybox:1.36", "command": ["sh", "-c", "true"]}]
    spec["containers"][0]["env"].append({"name": "PYTHONPATH", "value": "/opt/plugins"})
    return doc


def kernelwarmup(name: str, ns: str, spec: Optional[dict] = None, **over: Any) -> dict:
    s = {"targets": {"selector": {"matchLabels": {"warm": "yes"}}},
         "model": {"configPath": "/models/Meta-Llama-3.1-8B-Instruct/config.json"}}
    s.update(spec or {})
    s.update(over)
    return {"apiVersion": "kernelwarmup.dev/v1alpha1", "kind": "KernelWarmup",
            "metadata": {"name": name, "namespace": ns}, "spec": s}


def template_of(cluster, name: str, ns: str) -> dict:
    return get(cluster, "deployment", name, ns)["spec"]["template"]


def replicasets(cluster, ns: str, name: str) -> list[dict]:
    return [rs for rs in get_list(cluster, "replicasets", ns)
            if any(o.get("name") == name for o in rs["metadata"].get("ownerReferences") or [])]


def simulate_init_termination(cluster, pod: dict, warmer_message: str, warmer_exit_code: int = 0) -> None:
    """Write every init container of ``pod`` as terminated into its status, the warmer with
    ``warmer_message`` as its termination message: what a kubelet would report."""
    from fake_kubelet import init_containers_terminated

    from warmup_operator.core import names

    patch = init_containers_terminated(pod, names.WARMER_CONTAINER, warmer_message, warmer_exit_code)
    cluster.kubectl_run("patch", "pod", pod["metadata"]["name"], "-n", pod["metadata"]["namespace"],
                        "--subresource=status", "--type=merge", "-p", json.dumps(patch))
