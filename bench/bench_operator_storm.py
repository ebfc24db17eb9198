#!/usr/bin/env python3
"""One tenant's prewarm storm vs another namespace's injection, on the local control plane:
the operator code before the fairness change and now, side by side in one run.

The storm (tests/support/storm.py): one KernelWarmup with a hostPath cache prewarmed on
150 GPU nodes, edited 5 times 3 s apart; meanwhile another namespace's opted-in Deployments
are created one after another and the time to each one's injection is measured. The
baseline's code comes from git (``git archive`` of ``--baseline-ref``: operator/ and
initcontainer/), run by the same Python against the same control plane.

    python bench/bench_operator_storm.py [--baseline-ref d4c81e9^] [--nodes 150] [--kubeconfig K]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "initcontainer"), str(ROOT / "devcluster"), str(ROOT / "tests"),
                str(ROOT / "tests/support"), str(ROOT / "tests/integration")]

import storm  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402
from operator_support import vllm_deployment  # noqa: E402

CRD = ROOT / "charts/kernel-warmup/crds/kernelwarmups.kernelwarmup.dev.yaml"
# The commit before "fairness (issue 25 item 3)": the operator the review measured.
DEFAULT_BASELINE = "d4c81e9^"


def code_at(ref: str, dest: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "operator", "initcontainer"],
                             capture_output=True, check=True, timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        tf.extractall(dest, filter="data")
    return dest


def one_run(api, kubeconfig: Path, work: Path, label: str, code: Path, nodes: int, extra_args: tuple) -> storm.Result:
    stamp = f"{label}-{int(time.time())}"
    env = {"PYTHONPATH": f"{code / 'operator'}:{code / 'initcontainer'}"}
    with OperatorProcess(kubeconfig, work / f"operator-{label}.log", resync_seconds=10.0, extra_env=env,
                         bootstrap_image="registry.local/kernel-warmup:bench", extra_args=extra_args) as op:
        print(f"{label}: storm over {nodes} nodes ...", flush=True)
        return storm.run(api, lambda name, ns: vllm_deployment(name, ns, labels={"warm": "yes"}), op.healthy,
                         storm_ns=storm.make_namespace(api, f"storm-{stamp}"),
                         other_ns=storm.make_namespace(api, f"other-{stamp}"), nodes=nodes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-ref", default=DEFAULT_BASELINE)
    ap.add_argument("--nodes", type=int, default=150)
    ap.add_argument("--kubeconfig", type=Path)
    args = ap.parse_args()
    import devcluster

    work = Path(tempfile.mkdtemp(prefix="bench-storm-"))
    baseline = code_at(args.baseline_ref, work / "baseline")
    with devcluster.kubeconfig_or_up(args.kubeconfig, work / "cluster") as kubeconfig:
        kubectl = str(devcluster.build()["kubectl"])

        def kubectl_run(*a: str, check: bool = True) -> subprocess.CompletedProcess:
            return subprocess.run([kubectl, f"--kubeconfig={kubeconfig}", *a], capture_output=True, text=True,
                                  check=check)
        kubectl_run("apply", "-f", str(CRD))
        devcluster.wait_crd_established(kubectl_run, "kernelwarmups.kernelwarmup.dev")
        api = storm.client(str(kubeconfig))
        storm.make_nodes(api, args.nodes)
        bounds = (f"--prewarm-max-jobs={args.nodes}", f"--prewarm-max-jobs-per-namespace={args.nodes}")
        rows = {f"before ({args.baseline_ref})": one_run(api, kubeconfig, work, "before", baseline, args.nodes, ()),
                "now": one_run(api, kubeconfig, work, "now", ROOT, args.nodes, bounds)}
    print(f"\nanother namespace's time to injection during a {args.nodes}-node x 5-edit prewarm storm:")
    for label, result in rows.items():
        print(f"  {label:24s} {result.line()}")
    before, now = (r.percentile(0.99) for r in rows.values())
    print(f"p99 before / now: {before / now:.1f}" if before != float("inf") else
          f"p99 before: never injected within {storm.GIVE_UP_S:.0f}s; now {now:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
