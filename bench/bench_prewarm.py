#!/usr/bin/env python3
"""Prewarm vs no prewarm: time from a KernelWarmup change until every new Pod is past its
init containers, on the local control plane, side by side in one run; and the operator's
extra memory for 20 concurrent prewarm Jobs.

The warmer's times are measured first, here: a compile-only run of vLLM's own prefill
kernel (the `vllm` provider on vLLM 0.33.0's kernel file, two encoder variants) into an
empty cache (cold), then the same run again (warm). There is no kubelet, so a stand-in
plays the node: it holds each Pod's init phase for the time its warmer would take on the
shared cache at that moment (cold until the first warmer of that hash finished; a warmer
that starts meanwhile waits on the cache lock, then finds it warm) and then marks the Pod
Ready (a Job's Pod: Succeeded), so the real Deployment and Job controllers carry on.

    python bench/bench_prewarm.py [--replicas 4] [--jobs 20] [--kubeconfig K]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "initcontainer"), str(ROOT / "devcluster"), str(ROOT / "tests")]

from fake_kubelet import init_containers_terminated, pod_finished  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402

from warmup_operator.core import names  # noqa: E402

CRD = ROOT / "charts/kernel-warmup/crds/kernelwarmups.kernelwarmup.dev.yaml"
PLAN = {"layers": [{"numHeads": 32, "numKvHeads": 8, "headSize": 128, "count": 2},
                   {"numHeads": 32, "numKvHeads": 8, "headSize": 128, "slidingWindow": 4096}]}
SERVE = "vllm serve m --attention-backend TRITON_ATTN --hf-overrides '{\"is_causal\": false}'"


def warmer_seconds(work: Path) -> tuple[float, float]:
    """(cold, warm) wall seconds of the warmer, compile-only, on one cache."""
    from support import vllm_kernel
    kernel = vllm_kernel.ensure()
    (work / "plan.json").write_text(json.dumps(PLAN))
    cmd = [sys.executable, "-m", "kernel_warmer", "run", "--plan", str(work / "plan.json"), "--serve-command", SERVE,
           "--provider", "vllm", "--compile-only", "--target", "sm_90", "--no-flashinfer",
           "--cache-dir", str(work / "cache"), "--termination-log", str(work / "term")]
    env = {"PYTHONPATH": f"{kernel}:{ROOT / 'initcontainer'}", "PATH": "/usr/bin:/bin"}
    out = []
    for label in ("cold", "warm"):
        t = time.monotonic()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        out.append(time.monotonic() - t)
        summary = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"warmer {label}: {out[-1]:.2f}s rc={p.returncode} triton={summary.get('triton')}", flush=True)
    return out[0], out[1]


class StandIn(threading.Thread):
    """The node: each new Pod's init phase held for its warmer's time, then Ready."""

    def __init__(self, api, ns: str, cold: float, warm: float):
        super().__init__(daemon=True)
        self.api, self.ns, self.cold, self.warm = api, ns, cold, warm
        self.warm_at: dict[str, float] = {}  # hash -> when its cache is warm
        self.due: dict[str, tuple[float, dict]] = {}
        self.created: dict[str, float] = {}
        self.done: dict[str, tuple[str, float]] = {}  # pod -> (hash, init done)
        self.stop = threading.Event()

    def hold(self, h: str, now: float) -> float:
        if h not in self.warm_at:
            self.warm_at[h] = now + self.cold
            return self.cold
        return max(self.warm_at[h] - now, 0.0) + self.warm

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            for pod in self.api.list_namespaced_pod(self.ns).items:
                self.see(self.api.api_client.sanitize_for_serialization(pod), now)
            for name, (at, pod) in list(self.due.items()):
                if at <= now:
                    self.finish(pod)
                    del self.due[name]
            time.sleep(0.1)

    def see(self, pod: dict, now: float) -> None:
        meta = pod["metadata"]
        if meta["name"] in self.created or meta.get("deletionTimestamp"):
            return
        self.created[meta["name"]] = now
        labels, ann = meta.get("labels") or {}, meta.get("annotations") or {}
        h = labels.get(names.LABEL_PREWARM_HASH) or ann.get(names.ANN_HASH)
        self.due[meta["name"]] = (now + (self.hold(h, now) if h else 0.0), pod)

    def finish(self, pod: dict) -> None:
        name, now = pod["metadata"]["name"], time.monotonic()
        summary = json.dumps({"status": "ok", "seconds": round(now - self.created[name], 3)})
        if names.LABEL_PREWARM_HASH in (pod["metadata"].get("labels") or {}):
            patch = pod_finished(pod, names.WARMER_CONTAINER, summary)
        else:
            patch = ready(pod, summary)
            h = (pod["metadata"].get("annotations") or {}).get(names.ANN_HASH, "")
            self.done[name] = (h, now)
        try:
            self.api.patch_namespaced_pod_status(name, self.ns, patch)
        except Exception as exc:  # a Pod deleted meanwhile (an old ReplicaSet's): 404
            if getattr(exc, "status", None) != 404:
                raise


def ready(pod: dict, message: str) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = init_containers_terminated(pod, names.WARMER_CONTAINER, message)["status"] if pod["spec"].get("initContainers") else {}
    conds = [{"type": t, "status": "True", "lastTransitionTime": now}
             for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    running = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": True, "started": True, "restartCount": 0,
                "state": {"running": {"startedAt": now}}} for c in pod["spec"]["containers"]]
    return {"status": {**status, "phase": "Running", "conditions": conds, "containerStatuses": running}}


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    import devcluster
    return subprocess.run([str(devcluster.build()["kubectl"]), f"--kubeconfig={kubeconfig}", *args], input=input,
                          capture_output=True, text=True, check=True, timeout=300).stdout


def objects(ns: str, name: str, replicas: int, prewarm: bool, tp: int) -> list[dict]:
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "kernel-cache", "namespace": ns},
           "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}}}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": ns, "labels": {"kw": name},
                        "annotations": {"kernelwarmup.dev/kernelwarmup": name}},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"pod": name}},
                    "template": {"metadata": {"labels": {"pod": name}}, "spec": {"containers": [
                        {"name": "vllm", "image": "vllm/vllm-openai:v0.11.0", "args": ["--model=/models/m"],
                         "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}}}
    kw = {"apiVersion": "kernelwarmup.dev/v1alpha1", "kind": "KernelWarmup", "metadata": {"name": name, "namespace": ns},
          "spec": {"targets": {"selector": {"matchLabels": {"kw": name}}}, "model": {"layers": PLAN["layers"]},
                   "tensorParallelSize": tp, "failurePolicy": "Ignore", "prewarm": {"enabled": prewarm},
                   "cache": {"persistentVolumeClaim": {"claimName": "kernel-cache"}}}}
    return [pvc, dep, kw]


def wait(what: str, fn, timeout_s: float = 300.0):
    deadline, last = time.monotonic() + timeout_s, time.monotonic()
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        if time.monotonic() - last > 15:
            print(f"  ... still waiting for {what}", flush=True)
            last = time.monotonic()
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def rollout(api, kubeconfig: Path, ns: str, replicas: int, prewarm: bool, cold: float, warm: float) -> tuple[float, float]:
    """(change -> every new Pod past init, the longest init phase of a new Pod), seconds."""
    kubectl(kubeconfig, "create", "namespace", ns)
    stand_in = StandIn(api, ns, cold, warm)
    stand_in.start()
    apps = __import__("kubernetes").client.AppsV1Api(api.api_client)
    hash_of = lambda: (apps.read_namespaced_deployment("llm", ns).spec.template.metadata.annotations or {}).get(names.ANN_HASH)  # noqa: E731
    kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1",
                                                               "items": objects(ns, "llm", replicas, prewarm, 1)}))
    first = wait("the first injection rolled out", lambda: (h := hash_of()) and sum(
        1 for hh, _ in stand_in.done.values() if hh == h) >= replicas and h)
    time.sleep(2)
    t0 = time.monotonic()
    kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps(objects(ns, "llm", replicas, prewarm, 2)[2]))
    second = wait("the new hash", lambda: (h := hash_of()) != first and h)
    pods = wait("every new Pod past its init containers", lambda: len(
        p := [(n, t) for n, (h, t) in stand_in.done.items() if h == second]) >= replicas and p)
    stand_in.stop.set()
    return max(t for _, t in pods) - t0, max(t - stand_in.created[n] for n, t in pods)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(api, kubeconfig: Path, op: OperatorProcess, n: int) -> tuple[float, float]:
    """Operator RSS with n injected KernelWarmups (prewarm off), then with n prewarm Jobs running."""
    ns = f"bench-prewarm-mem-{int(time.time())}"
    kubectl(kubeconfig, "create", "namespace", ns)
    batch = __import__("kubernetes").client.BatchV1Api(api.api_client)
    docs = [d for i in range(n) for d in objects(ns, f"m{i}", 0, False, 1)[i and 1:]]
    kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": docs}))
    apps = __import__("kubernetes").client.AppsV1Api(api.api_client)
    wait(f"{n} injected", lambda: sum(1 for d in apps.list_namespaced_deployment(ns).items
                                      if names.ANN_HASH in (d.spec.template.metadata.annotations or {})) == n)
    time.sleep(5)
    before = rss_mib(op.proc.pid)
    kws = [objects(ns, f"m{i}", 0, True, 2)[2] for i in range(n)]
    kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": kws}))
    wait(f"{n} prewarm Jobs", lambda: len(batch.list_namespaced_job(ns).items) == n)
    time.sleep(5)
    return before, rss_mib(op.proc.pid)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--kubeconfig", type=Path)
    args = ap.parse_args()
    import devcluster
    import kubernetes

    work = Path(tempfile.mkdtemp(prefix="bench-prewarm-"))
    cold, warm = warmer_seconds(work)
    with devcluster.kubeconfig_or_up(args.kubeconfig, work / "cluster") as kubeconfig:
        kubectl(kubeconfig, "apply", "-f", str(CRD))
        kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/kernelwarmups.kernelwarmup.dev")
        api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(kubeconfig)))
        with OperatorProcess(kubeconfig, work / "operator.log", resync_seconds=2) as op:
            stamp = int(time.time())
            rows = {}
            for prewarm in (False, True):
                label = "with prewarm" if prewarm else "without prewarm"
                print(f"{label}: {args.replicas} replicas, PVC cache ...", flush=True)
                rows[label] = rollout(api, kubeconfig, f"bench-prewarm-{int(prewarm)}-{stamp}", args.replicas,
                                      prewarm, cold, warm)
            before, after = memory(api, kubeconfig, op, args.jobs)
    print(f"\nwarmer (compile-only, vLLM's kernel, 2 variants): cold {cold:.2f}s, warm {warm:.2f}s")
    print(f"{'':18s} {'change -> all new Pods past init (s)':>38s} {'longest init phase (s)':>24s}")
    for label, (total, longest) in rows.items():
        print(f"{label:18s} {total:38.2f} {longest:24.2f}")
    (t0, l0), (t1, l1) = rows["without prewarm"], rows["with prewarm"]
    print(f"ratio without / with prewarm: end to end {t0 / t1:.2f}, longest init phase {l0 / l1:.2f}")
    print(f"operator RSS: {before:.1f} MiB with {args.jobs} KernelWarmups injected, {after:.1f} MiB with {args.jobs} "
          f"prewarm Jobs running: +{after - before:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
