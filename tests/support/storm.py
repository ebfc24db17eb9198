"""The prewarm storm of issue 25's review, on a real control plane, for the load test
(tests/integration/test_operator_load.py) and its bench (bench/bench_operator_storm.py).

One KernelWarmup with a hostPath cache prewarmed on ``nodes`` GPU nodes is edited ``edits``
times ``gap_s`` apart (each edit supersedes every Job with a new one per node), while in
another namespace one opted-in Deployment after another is created and the time until its
template is injected is measured, through the whole storm. All calls go through the
operator's own raw client (``warmup_operator.kube.Kube``: JSON in and out).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from warmup_operator.core import names
from warmup_operator.core.kinds import DEPLOYMENT

NODE_POOL = {"pool": "storm"}
HOSTPATH = "/var/cache/kernel-warmup"
GIVE_UP_S = 60.0  # a workload not injected by then counts as never (inf)


def client(kubeconfig: str) -> Any:
    import kubernetes

    from warmup_operator.kube import Kube
    return Kube(kubernetes.config.new_client_from_config(kubeconfig))


def apply(api: Any, path: str, obj: dict) -> None:
    api._call("PATCH", path, body=obj, query=[("fieldManager", "storm"), ("force", "true")],
              content_type="application/apply-patch+yaml")


def make_nodes(api: Any, n: int) -> None:
    for i in range(n):
        name = f"storm-gpu-{i:03d}"
        apply(api, f"/api/v1/nodes/{name}", {"apiVersion": "v1", "kind": "Node",
                                            "metadata": {"name": name, "labels": dict(NODE_POOL)}})


def make_namespace(api: Any, name: str) -> str:
    apply(api, f"/api/v1/namespaces/{name}", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def kernelwarmup(ns: str, spec: dict) -> dict:
    return {"apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.KIND, "metadata": {"name": "kw", "namespace": ns},
            "spec": {"targets": {"selector": {"matchLabels": {"warm": "yes"}}},
                     "model": {"configPath": "/models/Meta-Llama-3.1-8B-Instruct/config.json"}, **spec}}


def apply_kernelwarmup(api: Any, ns: str, spec: dict) -> None:
    apply(api, f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{ns}/{names.PLURAL}/kw", kernelwarmup(ns, spec))


def time_to_injection(api: Any, deployment: dict) -> float:
    ns, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
    t0 = time.monotonic()
    api._call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body=deployment)
    while time.monotonic() - t0 < GIVE_UP_S:
        t = ((api.get_workload(DEPLOYMENT, ns, name) or {}).get("spec") or {}).get("template") or {}
        if names.ANN_HASH in ((t.get("metadata") or {}).get("annotations") or {}):
            return time.monotonic() - t0
        time.sleep(0.05)
    return float("inf")


@dataclass
class Result:
    samples: list[float] = field(default_factory=list)
    healthy: list[bool] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self) -> str:
        never = sum(1 for s in self.samples if s == float("inf"))
        return (f"{len(self.samples)} workloads: p50 {statistics.median(self.samples):.2f}s p99 "
                f"{self.percentile(0.99):.2f}s max {max(self.samples):.2f}s, {never} never injected within "
                f"{GIVE_UP_S:.0f}s; /healthz 200 {sum(self.healthy)}/{len(self.healthy)}")


def run(api: Any, deployment: Callable[[str, str], dict], healthy: Callable[[], bool], *, storm_ns: str,
        other_ns: str, nodes: int, edits: int = 5, gap_s: float = 3.0, samples: int = 20,
        sample_gap_s: float = 0.5) -> Result:
    """The storm in ``storm_ns`` and the measurement in ``other_ns`` (``deployment(name, ns)``
    makes an opted-in workload that a KernelWarmup named kw selects by ``warm: yes``)."""
    api._call("POST", f"/apis/apps/v1/namespaces/{storm_ns}/deployments", body=deployment("llm", storm_ns))
    apply_kernelwarmup(api, other_ns, {})
    if time_to_injection(api, deployment("warm-up-0", other_ns)) == float("inf"):
        raise RuntimeError(f"the operator never injected {other_ns}/warm-up-0: no storm to measure against")

    def storm() -> None:
        for i in range(edits + 1):
            apply_kernelwarmup(api, storm_ns, {
                "timeoutSeconds": 600 + i, "failurePolicy": "Fail", "cache": {"hostPath": {"path": HOSTPATH}},
                "prewarm": {"nodes": {"source": "Selector", "selector": {"matchLabels": dict(NODE_POOL)}}}})
            time.sleep(gap_s)

    thread = threading.Thread(target=storm, daemon=True)
    thread.start()
    out = Result()
    while thread.is_alive() or len(out.samples) < samples:
        out.samples.append(time_to_injection(api, deployment(f"other-{len(out.samples) + 1}", other_ns)))
        out.healthy.append(healthy())
        time.sleep(sample_gap_s)
    thread.join(60)
    return out


def jobs_of_last_edit(api: Any, ns: str) -> int:
    """The live prewarm Jobs, if they are all of one hash (else minus the number of hashes)."""
    jobs = [j for j in api.list_jobs(ns, names.LABEL_PREWARM_CR) if not j["metadata"].get("deletionTimestamp")]
    hashes = {(j["metadata"].get("labels") or {}).get(names.LABEL_PREWARM_HASH) for j in jobs}
    return len(jobs) if len(hashes) == 1 else -len(hashes)
