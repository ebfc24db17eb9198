#!/usr/bin/env python3
"""Operator throughput: N KernelWarmups over M Deployments on the real local control plane,
and the admission webhook (issue 13): write latency and rollouts per user edit.

Times from applying the KernelWarmups until every selected Deployment's template carries
the injection, and reads the operator's peak RSS. Two ways side by side in one run:
Deployments created *before* the KernelWarmups (CR handlers inject) and *after* them
(the workload watch injects); the ratio of the two is printed.

The webhook part (bench_webhook.py) compares, in one run, workloads the webhook injects
(opted in by label) with the same workloads the controller alone injects (annotation
only): the latency of 50 concurrent writes through the API server, and rollouts
(ReplicaSets) per user edit over 200 edits.

    python bench/bench_operator.py [--crs 20] [--deployments 200] [--kubeconfig K] [--part all|injection|webhook]

Without --kubeconfig it starts its own control plane (devcluster) in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "initcontainer"), str(ROOT / "devcluster"), str(ROOT / "bench")]

from operator_process import OperatorProcess  # noqa: E402

from warmup_operator.core import names  # noqa: E402

CRD = ROOT / "charts/kernel-warmup/crds/kernelwarmups.kernelwarmup.dev.yaml"


class Kubectl:
    def __init__(self, kubectl: Path, kubeconfig: Path):
        self.base = [str(kubectl), f"--kubeconfig={kubeconfig}"]

    def __call__(self, *args: str, input: str | None = None) -> str:
        return subprocess.run([*self.base, *args], input=input, capture_output=True, text=True, check=True,
                              timeout=300).stdout


def deployment(i: int, ns: str, group: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"llm-{i}", "namespace": ns, "labels": {"group": f"g{group}"},
                         "annotations": {"kernelwarmup.dev/kernelwarmup": f"kw-{group}"}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"pod": f"llm-{i}"}},
                     "template": {"metadata": {"labels": {"pod": f"llm-{i}"}}, "spec": {"containers": [
                         {"name": "vllm", "image": "vllm/vllm-openai:v0.11.0", "args": ["--model=/models/m"],
                          "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}}}


def kernelwarmup(g: int, ns: str) -> dict:
    return {"apiVersion": "kernelwarmup.dev/v1alpha1", "kind": "KernelWarmup",
            "metadata": {"name": f"kw-{g}", "namespace": ns},
            "spec": {"targets": {"selector": {"matchLabels": {"group": f"g{g}"}}},
                     "model": {"configPath": "/models/m/config.json"}}}


def as_list(items: list[dict]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def injected_count(k: Kubectl, ns: str) -> int:
    key = names.ANN_HASH.replace(".", "\\.").replace("/", "\\/")
    out = k("get", "deployments", "-n", ns, "-o", f"jsonpath={{range .items[*]}}{{.spec.template.metadata.annotations.{key}}}{{\"\\n\"}}{{end}}")
    return sum(1 for line in out.splitlines() if line.strip())


def scenario(k: Kubectl, ns: str, n_crs: int, n_deps: int, crs_first: bool, timeout_s: float) -> float:
    k("create", "namespace", ns)
    deps = as_list([deployment(i, ns, i % n_crs) for i in range(n_deps)])
    crs = as_list([kernelwarmup(g, ns) for g in range(n_crs)])
    if crs_first:
        k("apply", "-f", "-", input=crs)
        start = time.monotonic()
        k("apply", "-f", "-", input=deps)
    else:
        k("apply", "-f", "-", input=deps)
        start = time.monotonic()
        k("apply", "-f", "-", input=crs)
    deadline = start + timeout_s
    while time.monotonic() < deadline:
        if injected_count(k, ns) == n_deps:
            return time.monotonic() - start
        time.sleep(1.0)  # kubectl itself costs CPU on a small machine
    raise SystemExit(f"{ns}: only {injected_count(k, ns)}/{n_deps} injected after {timeout_s}s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crs", type=int, default=20)
    ap.add_argument("--deployments", type=int, default=200)
    ap.add_argument("--kubeconfig", type=Path)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--part", choices=("all", "injection", "webhook"), default="all")
    ap.add_argument("--edits", type=int, default=200, help="webhook part: user edits per way")
    ap.add_argument("--concurrency", type=int, default=50, help="webhook part: concurrent writes")
    args = ap.parse_args()
    import devcluster

    with devcluster.kubeconfig_or_up(args.kubeconfig, Path(tempfile.mkdtemp(prefix="bench-operator-"))) as kubeconfig:
        k = Kubectl(devcluster.build()["kubectl"], kubeconfig)
        if args.part in ("all", "injection"):
            injection_part(k, kubeconfig, args)
        if args.part in ("all", "webhook"):
            import bench_webhook
            bench_webhook.run(k, kubeconfig, devcluster.build(), args.edits, args.concurrency)
    return 0


def injection_part(k: Kubectl, kubeconfig: Path, args: argparse.Namespace) -> None:
    rows = []
    k("apply", "-f", str(CRD))
    k("wait", "--for=condition=Established", "crd/kernelwarmups.kernelwarmup.dev")
    log = Path(tempfile.mkdtemp(prefix="bench-operator-log-")) / "operator.log"
    with OperatorProcess(kubeconfig, log, resync_seconds=30) as op:
        stamp = int(time.time())
        spaces = []
        for label, crs_first in (("workloads first, then KernelWarmups", False),
                                 ("KernelWarmups first, then workloads", True)):
            ns = f"bench-{'late' if crs_first else 'early'}-{stamp}"
            spaces.append(ns)
            secs = scenario(k, ns, args.crs, args.deployments, crs_first, args.timeout)
            rows.append((label, secs, op.peak_rss_mib()))
        time.sleep(3)  # let any late duplicate show up before counting
    text = log.read_text(errors="replace")
    injections = sum(text.count(f"Injected Deployment {ns}/") for ns in spaces)
    print(f"\n{args.crs} KernelWarmups over {args.deployments} Deployments (operator log: {log})")
    print(f"{'scenario':40s} {'all injected (s)':>17s} {'per workload (ms)':>18s} {'peak RSS (MiB)':>15s}")
    for label, secs, rss in rows:
        print(f"{label:40s} {secs:17.2f} {1000 * secs / args.deployments:18.1f} {rss:15.1f}")
    print(f"ratio (first / second): {rows[0][1] / rows[1][1]:.2f}; injections applied: {injections:.0f} "
          f"(expected {2 * args.deployments}: one per workload, no repeats)")


if __name__ == "__main__":
    sys.exit(main())
