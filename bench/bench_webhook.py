"""The admission webhook's part of bench_operator.py (issue 13), two ways side by side:

- "webhook": Deployments opted in by label, injected by the webhook in the user's write;
- "controller": the same Deployments opted in by annotation only (outside the webhook's
  selector), injected by the controller after the write.

Measures the latency of ``concurrency`` concurrent writes (strategic-merge PATCHes through
the API server, timed by the client) and the rollouts (new ReplicaSets) per user edit over
``edits`` edits (rounds of one image change per Deployment, each round settled before the
next). The operator runs as its own ServiceAccount (cluster-admin here), as in a cluster:
its own writes are not sent through the webhook's injection."""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import helmchart
import yaml
from operator_process import OperatorProcess, free_port

from warmup_operator.core import names
from warmup_operator.core.trust import OPT_IN

NS = "bench-webhook"
CONFIG = "kernel-warmup-bench"
WAYS = ("webhook", "controller")


def chart_configuration(tools: helmchart.Tools, port: int) -> dict:
    """The chart's MutatingWebhookConfiguration, called at https://127.0.0.1:<port>/inject."""
    out = tools.helm_run("template", "kw", str(helmchart.CHART), "--namespace", "kernel-warmup-system").stdout
    conf = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "MutatingWebhookConfiguration")
    conf["metadata"] = {"name": CONFIG}
    for hook in conf["webhooks"]:
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/inject"}
    return conf


def deployment(name: str, way: str) -> dict:
    meta = {"name": name, "namespace": NS, "labels": {"warm": "yes"}}
    if way == "webhook":
        meta["labels"][OPT_IN] = "kw"
    else:
        meta["annotations"] = {OPT_IN: "kw"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": 0, "revisionHistoryLimit": 1000, "selector": {"matchLabels": {"pod": name}},
                     "template": {"metadata": {"labels": {"pod": name}}, "spec": {"containers": [
                         {"name": "vllm", "image": "vllm/vllm-openai:v0.11.0", "args": ["--model=/models/m"],
                          "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}}}


def operator_kubeconfig(tools: helmchart.Tools, k: Any, d: Path) -> Path:
    k("create", "serviceaccount", "bench-operator", "-n", NS)
    k("create", "clusterrolebinding", "bench-operator", "--clusterrole=cluster-admin",
      f"--serviceaccount={NS}:bench-operator")
    return helmchart.service_account_kubeconfig(tools, NS, "bench-operator", d / "sa-kubeconfig")


def api(kubeconfig: Path) -> Any:
    import kubernetes
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    client.configuration.connection_pool_maxsize = 64
    return kubernetes.client.AppsV1Api(client)


def timed_writes(apps: Any, deployments: list[str], concurrency: int, tag: str) -> list[float]:
    """One PATCH (an env var on the serving container) per Deployment, ``concurrency`` at once."""
    def write(name: str) -> float:
        body = {"spec": {"template": {"spec": {"containers": [{"name": "vllm", "env": [
            {"name": "BENCH", "value": tag}]}]}}}}
        t0 = time.perf_counter()
        apps.patch_namespaced_deployment(name, NS, body)
        return time.perf_counter() - t0
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(write, deployments))


def settled(apps: Any, deployments: list[str]) -> bool:
    for d in apps.list_namespaced_deployment(NS).items:
        if d.metadata.name not in deployments:
            continue
        spec = d.spec.template.spec
        warmer = next((c for c in spec.init_containers or [] if c.name == names.WARMER_CONTAINER), None)
        if warmer is None or warmer.image != spec.containers[0].image:
            return False
    return True


def revisions(apps: Any, deployments: set[str]) -> int:
    """Rollouts so far: the Deployment controller numbers each new ReplicaSet it makes
    (old ReplicaSets are pruned past revisionHistoryLimit, so they cannot be counted)."""
    return sum(int((d.metadata.annotations or {}).get("deployment.kubernetes.io/revision", 0))
               for d in apps.list_namespaced_deployment(NS).items if d.metadata.name in deployments)


def replicasets(apps: Any, deployments: set[str]) -> int:
    return sum(1 for rs in apps.list_namespaced_replica_set(NS).items
               if any(o.name in deployments for o in rs.metadata.owner_references or []))


def synced(apps: Any, deployments: list[str]) -> bool:
    """The Deployment controller has seen every Deployment's latest template."""
    return all(d.status.observed_generation == d.metadata.generation
               for d in apps.list_namespaced_deployment(NS).items if d.metadata.name in deployments)


def wait(what: str, fn, timeout_s: float = 300) -> None:
    start = time.monotonic()
    last_say = start
    while not fn():
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"bench_webhook: {what} not reached in {timeout_s:.0f}s")
        if time.monotonic() - last_say > 15:
            print(f"  ... waiting for {what} ({time.monotonic() - start:.0f}s)", flush=True)
            last_say = time.monotonic()
        time.sleep(0.5)


def rollouts_per_edit(apps: Any, deployments: list[str], edits: int, concurrency: int) -> float:
    """Rounds of one image change per Deployment, each settled before the next."""
    wait("earlier writes rolled out", lambda: synced(apps, deployments))
    time.sleep(2.0)
    before = revisions(apps, set(deployments)), replicasets(apps, set(deployments))
    done = 0
    for rnd in range(1, edits // len(deployments) + 1):
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda n: apps.patch_namespaced_deployment(n, NS, {"spec": {"template": {"spec": {
                "containers": [{"name": "vllm", "image": f"vllm/vllm-openai:v0.12.{rnd}"}]}}}}), deployments))
        done += len(deployments)
        wait(f"round {rnd} injected", lambda: settled(apps, deployments))
        time.sleep(2.0)  # a controller's follow-up write would land by now
        wait(f"round {rnd} rolled out", lambda: synced(apps, deployments))
        print(f"  {done}/{edits} edits", flush=True)
    time.sleep(3.0)
    wait("last round rolled out", lambda: synced(apps, deployments))
    rs = (replicasets(apps, set(deployments)) - before[1]) / done
    print(f"  new ReplicaSets per edit: {rs:.2f}", flush=True)
    return (revisions(apps, set(deployments)) - before[0]) / done


def answer_seconds(metrics_text: str) -> tuple[float, int]:
    """The webhook's own mean answer time and count (kernel_warmup_admission_seconds)."""
    vals = {}
    for line in metrics_text.splitlines():
        for key in ("kernel_warmup_admission_seconds_sum", "kernel_warmup_admission_seconds_count"):
            if line.startswith(key + " "):
                vals[key] = float(line.split()[1])
    n = int(vals.get("kernel_warmup_admission_seconds_count", 0))
    return (vals.get("kernel_warmup_admission_seconds_sum", 0.0) / n if n else float("nan")), n


def percentile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def run(k: Any, kubeconfig: Path, tools_paths: dict, edits: int, concurrency: int) -> None:
    tools = helmchart.Tools(helm=tools_paths["helm"], kubectl=tools_paths["kubectl"], kubeconfig=kubeconfig)
    d = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    k("apply", "-f", str(helmchart.ROOT / "charts/kernel-warmup/crds/kernelwarmups.kernelwarmup.dev.yaml"))
    k("create", "namespace", NS)
    port = free_port()
    k("apply", "-f", "-", input=json.dumps(chart_configuration(tools, port)))
    sa = operator_kubeconfig(tools, k, d)
    k("apply", "-f", "-", input=json.dumps({
        "apiVersion": "kernelwarmup.dev/v1alpha1", "kind": "KernelWarmup", "metadata": {"name": "kw", "namespace": NS},
        "spec": {"targets": {"selector": {"matchLabels": {"warm": "yes"}}}, "model": {"configPath": "/models/m/config.json"}}}))
    per_way = max(concurrency, 1)
    groups = {w: [f"{w}-{i}" for i in range(per_way)] for w in WAYS}
    args = ("--webhook-port", str(port), "--webhook-bind", "127.0.0.1", "--webhook-configuration", CONFIG)
    rows = {}
    with OperatorProcess(sa, d / "operator.log", resync_seconds=30, extra_args=args) as op:
        apps = api(kubeconfig)
        time.sleep(2)
        for w in WAYS:
            k("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                    "items": [deployment(n, w) for n in groups[w]]}))
            wait(f"{w}: created and injected", lambda: settled(apps, groups[w]))
        for w in WAYS:
            lat = [x for r in range(4) for x in timed_writes(apps, groups[w], concurrency, f"{w}-{r}")]
            wait(f"{w}: latency writes settled", lambda: settled(apps, groups[w]))
            print(f"  {w}: {len(lat)} timed writes", flush=True)
            rows[w] = (percentile(lat, 50), percentile(lat, 99), rollouts_per_edit(apps, groups[w], edits, concurrency))
        mean_answer, answers = answer_seconds(op.metrics())
    print(f"\nadmission webhook: {concurrency} concurrent workload writes (PATCH through the API server, client-timed), "
          f"then {edits} image edits per way ({len(groups['webhook'])} Deployments, rounds of one edit each)")
    print(f"{'way':12s} {'write p50 (ms)':>15s} {'write p99 (ms)':>15s} {'rollouts per edit':>18s}")
    for w in WAYS:
        p50, p99, rpe = rows[w]
        print(f"{w:12s} {1000 * p50:15.1f} {1000 * p99:15.1f} {rpe:18.2f}")
    print(f"the webhook's own answer (operator metric): mean {1000 * mean_answer:.1f} ms over {answers} admissions")
    print(f"ratio (controller / webhook) rollouts per edit: {rows['controller'][2] / rows['webhook'][2]:.2f}; "
          f"write p50 webhook / controller: {rows['webhook'][0] / rows['controller'][0]:.2f}")
