#!/usr/bin/env python3
"""`make demo`: the operator end to end on the local control plane. The KernelWarmup's cache
is a node folder with prewarm on, so the operator first runs a prewarm Job; its warmer
command runs here in compile-only mode (no GPU) into the demo cache, the kubelet stand-in
marks the Job's Pod Succeeded, the real Job controller completes the Job, the operator
patches the Deployment once, and the new Pod's warmer finds the cache warm (`check`).

The Helm chart installs the CRD, ServiceAccount, RBAC and the operator Deployment. With no
kubelet that Deployment's Pod stays Pending, so the operator runs here, as the chart's
ServiceAccount (a TokenRequest token): with exactly the chart's RBAC, no admin rights.

    python devcluster/demo.py --kubeconfig .cluster/kubeconfig [--workdir .demo] [--target sm_90]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "initcontainer"), str(ROOT / "devcluster")]

import helmchart  # noqa: E402
from fake_kubelet import init_containers_terminated, pod_finished  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402

import devcluster  # noqa: E402
from kernel_warmer.cache.volume import CacheLayout  # noqa: E402
from warmup_operator.core import names  # noqa: E402

RELEASE, RELEASE_NS = "kernel-warmup", "kernel-warmup-system"
EXAMPLES = ROOT / "examples"
LOCAL_CONFIG = EXAMPLES / "models/Meta-Llama-3.1-8B-Instruct/config.json"
NS, DEPLOY, KW = "default", "vllm-llama", "llama-3-1-8b"
# The GPU node, registered as its kubelet would (examples/kernelwarmup.yaml prewarms the
# nodes labelled so, as NVIDIA's GPU operator labels them).
GPU_NODE = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "gpu-node-1", "labels": {"nvidia.com/gpu.present": "true"}}}


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


class Kubectl:
    def __init__(self, kubeconfig: Path):
        self.base = [str(devcluster.build()["kubectl"]), f"--kubeconfig={kubeconfig}"]

    def __call__(self, *args: str, input: str | None = None, show: bool = False) -> str:
        if show:
            print("$ kubectl " + " ".join(args), flush=True)
        out = subprocess.run([*self.base, *args], input=input, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed:\n{out.stderr}")
        if show:
            print(out.stdout, end="", flush=True)
        return out.stdout

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json"))


def wait_for(what: str, fn, timeout_s: float = 90.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def dump(obj) -> str:
    try:
        import yaml
        return yaml.safe_dump(obj, sort_keys=False, width=110)
    except ImportError:
        return json.dumps(obj, indent=2)


def show_injection(template: dict) -> dict:
    spec = template["spec"]
    serving = next(c for c in spec["containers"] if c["name"] == "vllm")
    view = {
        "metadata.annotations": template["metadata"].get("annotations"),
        "initContainers": [
            {k: c.get(k) for k in ("name", "image", "command", "resources", "volumeMounts", "securityContext") if c.get(k)}
            for c in spec.get("initContainers") or []],
        "volumes": spec.get("volumes"),
        "containers[vllm].env": serving.get("env"),
        "containers[vllm].volumeMounts": serving.get("volumeMounts"),
    }
    print(dump(view))
    warmer = next(c for c in spec["initContainers"] if c["name"] == names.WARMER_CONTAINER)
    print("warmer spec (env KERNEL_WARMER_SPEC):")
    spec_json = next(e["value"] for e in warmer["env"] if e["name"] == "KERNEL_WARMER_SPEC")
    print(json.dumps(json.loads(spec_json), indent=2))
    return warmer


def run_warmer_locally(warmer: dict, work: Path, target: str, verb: str = "run") -> tuple[str, int, float]:
    """The injected warmer's own command and spec (``run``, or ``check`` on the same spec),
    with local paths."""
    site = work / "kernel-warmup"
    cache = work / "cache"
    term = work / "termination-log"
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # 1. What the bootstrap init container does in the Pod: lay out the warmer package.
    boot = [sys.executable, *warmer_bootstrap_tail(), str(site)]
    print("$ " + " ".join(boot), flush=True)
    subprocess.run(boot, check=True, env=dict(env, PYTHONPATH=str(ROOT / "initcontainer")))
    # 2. The warmer, with the injected env; the model volume and the cache are local here.
    for e in warmer.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
    spec = json.loads(env["KERNEL_WARMER_SPEC"])
    spec["model"] = {"configPath": str(LOCAL_CONFIG)}
    env["KERNEL_WARMER_SPEC"] = json.dumps(spec)
    env["PYTHONPATH"] = str(site / "python")
    env.update(CacheLayout.server_env_for(str(cache)))  # what a serving container's env would hold
    cmd = [sys.executable, *[verb if a == "run" else a for a in warmer["command"][1:]], "--compile-only",
           "--target", target, "--cache-dir", str(cache)]
    if verb == "run":
        term.unlink(missing_ok=True)
        cmd += ["--termination-log", str(term)]
    print(f"(model.configPath -> {LOCAL_CONFIG.relative_to(ROOT)}, cacheDir -> {cache})")
    print("$ " + " ".join(cmd), flush=True)
    start = time.monotonic()
    rc = subprocess.run(cmd, env=env, cwd=work).returncode
    return (term.read_text() if verb == "run" and term.exists() else ""), rc, time.monotonic() - start


def warmer_bootstrap_tail() -> list[str]:
    from warmup_operator.core.inject import BOOTSTRAP_COMMAND
    return BOOTSTRAP_COMMAND[1:-1]  # "-m kernel_warmer.bootstrap --dest"; the dest is local


def write_pod_status(k: Kubectl, pod: dict, message: str, exit_code: int) -> None:
    patch = init_containers_terminated(pod, names.WARMER_CONTAINER, message, exit_code)
    k("patch", "pod", pod["metadata"]["name"], "-n", NS, "--subresource=status", "--type=merge",
      "-p", json.dumps(patch), show=True)


def prewarm_job(k: Kubectl, work: Path, target: str) -> dict:
    """The Job the operator runs before the rollout; its warmer run here; its Pod marked."""
    step("before touching the Deployment, the operator runs a prewarm Job on the GPU node")
    job = wait_for("the prewarm Job", lambda: next(iter(k.json("get", "jobs", "-n", NS, "-l",
                                                               names.LABEL_PREWARM_CR)["items"]), None))
    name = job["metadata"]["name"]
    k("get", "jobs,pods", "-n", NS, "-o", "wide", show=True)
    template = k.json("get", "deployment", DEPLOY, "-n", NS)["spec"]["template"]
    print(f"Deployment template injected yet: {names.ANN_HASH in (template['metadata'].get('annotations') or {})}")
    wait_for("Prewarming in status", lambda: (k.json("get", "kernelwarmup", KW, "-n", NS).get("status") or {})
             .get("targets", [{}])[0].get("prewarm", {}).get("phase") == "Prewarming")
    print(dump({"status.targets[0].prewarm": k.json("get", "kernelwarmup", KW, "-n", NS)["status"]["targets"][0]["prewarm"]}))

    step(f"run the Job's warmer command here, compile-only for {target}, into the demo cache")
    warmer = job["spec"]["template"]["spec"]["containers"][0]
    message, rc, secs = run_warmer_locally(warmer, work, target)
    print(f"warmer exited {rc} after {secs:.1f}s; termination message ({len(message.encode())} bytes):\n{message}")
    if not message:
        raise SystemExit("the warmer wrote no termination message")

    step("the kubelet stand-in marks the Job's Pod finished; the Job controller completes the Job")
    pod = wait_for("the Job's Pod", lambda: next(iter(k.json("get", "pods", "-n", NS, "-l",
                                                             f"{names.LABEL_JOB_NAME}={name}")["items"]), None))
    k("patch", "pod", pod["metadata"]["name"], "-n", NS, "--subresource=status", "--type=merge", "-p",
      json.dumps(pod_finished(pod, names.WARMER_CONTAINER, message, rc)), show=True)
    wait_for("the Job complete", lambda: any(c["type"] == "Complete" and c["status"] == "True" for c in
                                             k.json("get", "job", name, "-n", NS).get("status", {}).get("conditions") or []))
    k("get", "jobs", "-n", NS, show=True)
    return job


def rollout(k: Kubectl, job: dict) -> str:
    """The one rollout, onto the warm cache: the hash the Job warmed."""
    step("then, and only then, the operator patched the Deployment's pod template (one rollout)")
    template = wait_for("injection", lambda: (t := k.json("get", "deployment", DEPLOY, "-n", NS)["spec"]["template"])
                        and names.ANN_HASH in ((t.get("metadata") or {}).get("annotations") or {}) and t)
    show_injection(template)
    h = template["metadata"]["annotations"][names.ANN_HASH]
    print(f"hash {h}; the Job warmed hash {job['metadata']['labels'][names.LABEL_PREWARM_HASH]}")
    return h


def new_pod_warmer(k: Kubectl, pod: dict, work: Path, target: str) -> None:
    """The new Pod's init container: `check` says warm, its `run` compiles nothing."""
    step("the new Pod's warmer: `check` on its injected spec, then its `run`, against the warm cache")
    warmer = next(c for c in pod["spec"]["initContainers"] if c["name"] == names.WARMER_CONTAINER)
    _, rc, secs = run_warmer_locally(warmer, work, target, verb="check")
    print(f"check exited {rc} ({'warm' if rc == 0 else 'COLD'}) in {secs:.1f}s")
    if rc != 0:
        raise SystemExit("the cache the prewarm Job filled is not warm for the new Pod")
    message, rc, secs = run_warmer_locally(warmer, work, target)
    print(f"run exited {rc} after {secs:.1f}s; termination message:\n{message}")
    step("write the new Pod's warmer summary into its status, as a kubelet would")
    write_pod_status(k, pod, message, rc)


def show_status(k: Kubectl, op: OperatorProcess, pod: dict) -> None:
    step("the KernelWarmup's status: the prewarm Job's summary, then the new Pod's warmup")
    wait_for("lastWarmup", lambda: (k.json("get", "kernelwarmup", KW, "-n", NS).get("status") or {})
             .get("lastWarmup", {}).get("pod") == pod["metadata"]["name"])
    k("get", "kernelwarmups", "-n", NS, show=True)
    status = k.json("get", "kernelwarmup", KW, "-n", NS)["status"]
    print(dump({"status": status}))
    events = [e for e in k.json("get", "events", "-n", NS)["items"]
              if e["involvedObject"].get("kind") in ("KernelWarmup", "Deployment")
              and e.get("source", {}).get("component", e.get("reportingComponent", "")) != "deployment-controller"]
    print("events:")
    for e in events:
        print(f"  {e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['type']} {e['reason']}: {e['message']}")
    print("\nmetrics:")
    for line in op.metrics().splitlines():
        if line.startswith("kernel_warmup_") and "_bucket{" not in line:
            print("  " + line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    ap.add_argument("--target", default="sm_90", help="GPU arch to compile for without a GPU")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    k = Kubectl(args.kubeconfig)

    step("install the chart: CRD, ServiceAccount, RBAC, operator Deployment, metrics Service")
    tools = helmchart.Tools(helm=devcluster.build()["helm"], kubectl=devcluster.build()["kubectl"],
                            kubeconfig=args.kubeconfig)
    print(f"$ helm upgrade --install {RELEASE} charts/kernel-warmup --namespace {RELEASE_NS} --create-namespace")
    print(helmchart.install(tools, RELEASE, RELEASE_NS), flush=True)
    sa = helmchart.fullname(RELEASE)
    k("get", "deployment,pods,serviceaccount,service", "-n", RELEASE_NS, show=True)
    k("describe", "clusterrole", sa, show=True)
    print("(no kubelet here: the operator Pod stays Pending; the operator runs below as its ServiceAccount)")

    step(f"start the operator here as ServiceAccount {RELEASE_NS}/{sa} (token from the TokenRequest API)")
    sa_kubeconfig = helmchart.service_account_kubeconfig(tools, RELEASE_NS, sa, work / "sa-kubeconfig")
    print(f"$ kubectl --kubeconfig={sa_kubeconfig} auth whoami")
    print(tools.kubectl_run(f"--kubeconfig={sa_kubeconfig}", "auth", "whoami").stdout, end="")
    # The chart's own flags for the operator, as its Deployment would pass them.
    chart_args = k.json("get", "deployment", sa, "-n", RELEASE_NS)["spec"]["template"]["spec"]["containers"][0]["args"]
    from warmup_operator.config import OperatorConfig
    flags = OperatorConfig.from_args(chart_args, {"POD_NAMESPACE": RELEASE_NS})  # the downward API's value
    op = OperatorProcess(sa_kubeconfig, work / "operator.log", resync_seconds=2, extra_env={"POD_NAME": "demo"},
                         namespaces=flags.namespaces, bootstrap_image=flags.bootstrap_image,
                         extra_args=helmchart.leader_flags(RELEASE, RELEASE_NS))
    op.start()
    print(f"operator running (pid {op.proc.pid}); log {op.log_path}; metrics :{op.metrics_port}")
    try:
        # A re-run starts over: the previous run's KernelWarmup (its finalizer needs the
        # operator), Deployment and cache go first, so the prewarm Job has work to do.
        k("delete", "kernelwarmup", KW, "-n", NS, "--ignore-not-found", "--wait=true", "--timeout=60s")
        k("delete", "deployment", DEPLOY, "-n", NS, "--ignore-not-found", "--wait=true", "--timeout=60s")
        shutil.rmtree(work / "cache", ignore_errors=True)
        k("apply", "-f", "-", input=json.dumps(GPU_NODE))
        step("apply examples/: a vLLM Deployment and a KernelWarmup (hostPath cache, prewarm on its GPU nodes)")
        k("apply", "-f", str(EXAMPLES / "vllm-deployment.yaml"), show=True)
        k("apply", "-f", str(EXAMPLES / "kernelwarmup.yaml"), show=True)
        job = prewarm_job(k, work, args.target)
        h = rollout(k, job)
        pod = wait_for("a Pod of the new ReplicaSet", lambda: next((
            p for p in k.json("get", "pods", "-n", NS)["items"]
            if (p["metadata"].get("annotations") or {}).get(names.ANN_HASH) == h), None))
        k("get", "replicasets,pods", "-n", NS, show=True)
        new_pod_warmer(k, pod, work, args.target)
        show_status(k, op, pod)
    finally:
        op.stop()
    print(f"\ndemo done; cache in {work / 'cache'}; `make cluster-down` stops the control plane")
    return 0


if __name__ == "__main__":
    sys.exit(main())
