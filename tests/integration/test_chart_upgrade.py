"""`helm upgrade` from the previous chart version keeps running workloads as they are.

The previous version is read from git at test time: the tree just before the commit that
set Chart.yaml's current `version` (chart, operator and warmer code of that commit, via
`git archive`; nothing is copied into the repository). Its chart is installed and its
operator injects a workload; then the current chart is upgraded over it, the CRD is
applied as the README says, and the current operator (two replicas, leader election, as
the chart's ServiceAccount) takes over: the workload stays injected with the same hash,
and nothing rolls out (same generation, same ReplicaSets).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from pathlib import Path

import helmchart
import pytest
import yaml
from operator_process import OperatorProcess
from operator_support import (
    CRD,
    ROOT,
    apply,
    get,
    kernelwarmup,
    namespace,
    replicasets,
    template_of,
    vllm_deployment,
    wait_for,
)

from warmup_operator.core import names

pytestmark = pytest.mark.cluster
CHART_YAML = "charts/kernel-warmup/Chart.yaml"
REL, REL_NS, NS = "kw-up", "kw-up-system", "chart-upgrade"
RESYNC_S = 1.0


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True, timeout=60).stdout


def _version_at(commit: str) -> str | None:
    try:
        return str(yaml.safe_load(_git("show", f"{commit}:{CHART_YAML}"))["version"])
    except subprocess.CalledProcessError:
        return None


def previous_version_commit() -> tuple[str, str]:
    """(commit, version): the tree just before Chart.yaml got its current version."""
    current = str(yaml.safe_load((ROOT / CHART_YAML).read_text())["version"])
    for commit in _git("log", "--format=%H", "--", CHART_YAML).split():
        before = _version_at(f"{commit}^")
        if _version_at(commit) == current and before not in (None, current):
            return f"{commit}^", before
    raise LookupError(f"no commit before chart version {current} in this checkout's history")


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> tuple[Path, str]:
    try:
        _git("rev-parse", "HEAD")
        commit, version = previous_version_commit()
    except (OSError, subprocess.CalledProcessError, LookupError) as exc:
        pytest.skip(f"the previous chart version comes from git history, not available here: {exc}")
    dest = tmp_path_factory.mktemp("previous")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "charts/kernel-warmup",
                              "operator", "initcontainer"], capture_output=True, check=True, timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        tf.extractall(dest, filter="data")
    print(f"\nprevious chart: version {version} at {_git('rev-parse', '--short', commit).strip()}")
    return dest, version


def operator(tools, tmp: Path, name: str, code: Path, *extra: str) -> OperatorProcess:
    kubeconfig = helmchart.service_account_kubeconfig(tools, REL_NS, helmchart.fullname(REL), tmp / f"{name}-kubeconfig")
    return OperatorProcess(kubeconfig, tmp / f"{name}.log", namespaces=(NS,), resync_seconds=RESYNC_S,
                           bootstrap_image="registry.local/kernel-warmup:test", extra_args=extra,
                           extra_env={"POD_NAME": name,
                                      "PYTHONPATH": f"{code / 'operator'}:{code / 'initcontainer'}"})


def test_upgrade_from_the_previous_version_rolls_nothing_out(cluster, previous, tmp_path):
    old_root, old_version = previous
    tools = helmchart.Tools(helm=cluster.helm, kubectl=cluster.kubectl, kubeconfig=cluster.kubeconfig)
    namespace(cluster, NS)
    helmchart.install(tools, REL, REL_NS, "--set", f"watchNamespaces={{{NS}}}", chart=old_root / "charts/kernel-warmup")
    apply(cluster, vllm_deployment("llm", NS, labels={"warm": "yes"}))
    apply(cluster, kernelwarmup("kw", NS))
    old = operator(tools, tmp_path, "old", old_root)
    with old:
        wait_for("injection by the previous version", lambda: names.ANN_HASH in
                 (template_of(cluster, "llm", NS)["metadata"].get("annotations") or {}), timeout_s=60)
        wait_for("the rollout's ReplicaSet", lambda: len(replicasets(cluster, NS, "llm")) == 2, timeout_s=30)
    before = get(cluster, "deployment", "llm", NS)
    rs_before = sorted(rs["metadata"]["name"] for rs in replicasets(cluster, NS, "llm"))

    # --reuse-values keeps only the old release's values: the new keys are missing, and the
    # chart says which flag to use instead of rendering zero replicas.
    r = tools.helm_run("upgrade", REL, str(helmchart.CHART), "--namespace", REL_NS, "--reuse-values", check=False)
    assert r.returncode != 0 and "--reset-then-reuse-values" in r.stderr, r.stderr
    tools.helm_run("upgrade", REL, str(helmchart.CHART), "--namespace", REL_NS, "--reset-then-reuse-values")
    cluster.kubectl_run("apply", "-f", str(CRD))  # the README's CRD upgrade step (helm never upgrades crds/)
    dep = get(cluster, "deployment", helmchart.fullname(REL), REL_NS)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert dep["spec"]["replicas"] == 2 and "--leader-elect" in args
    assert f"--namespace={NS}" in args  # the release's own values were kept
    history = tools.helm_run("history", REL, "--namespace", REL_NS).stdout
    assert f"kernel-warmup-{old_version}" in history

    new = [operator(tools, tmp_path, f"new-{i}", ROOT, *helmchart.leader_flags(REL, REL_NS)) for i in range(2)]
    try:
        for op in new:
            op.start()
        lease = wait_for("a new replica to lead", lambda: ((get(cluster, "lease", helmchart.fullname(REL), REL_NS) or {})
                                                          .get("spec") or {}).get("holderIdentity"), timeout_s=60)
        wait_for("the KernelWarmup resumed and Ready", lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in ((get(cluster, "kernelwarmup", "kw", NS) or {}).get("status") or {}).get("conditions") or []),
            timeout_s=60)
        time.sleep(5 * RESYNC_S)  # several resyncs of the new operator
        after = get(cluster, "deployment", "llm", NS)
        assert after["spec"]["template"] == before["spec"]["template"]
        assert after["metadata"]["generation"] == before["metadata"]["generation"] == 2
        assert sorted(rs["metadata"]["name"] for rs in replicasets(cluster, NS, "llm")) == rs_before
        print(f"upgrade {old_version} -> current: no rollout; Lease held by {lease}")
    finally:
        for op in new:
            op.stop()
        cluster.kubectl_run("delete", "kernelwarmup", "kw", "-n", NS, "--wait=false", check=False)
        cluster.kubectl_run("patch", "kernelwarmup", "kw", "-n", NS, "--type=merge", "-p",
                            '{"metadata":{"finalizers":null}}', check=False)
        tools.helm_run("uninstall", REL, "--namespace", REL_NS, "--wait", check=False)
