"""Shared fixtures: the real local control plane (session scope) and GPU gating."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "devcluster"))
sys.path.insert(0, str(ROOT / "tests" / "support"))  # vllm_kernel and friends, for tests in any folder

import devcluster  # noqa: E402


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call that shows kubectl's own message in the test report."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nkubectl said: {(self.stderr or '').strip()[-2000:]}"


@dataclass(frozen=True)
class Cluster:
    """A running etcd + kube-apiserver + kube-controller-manager on loopback."""

    dir: Path
    kubeconfig: Path
    server: str
    kubectl: Path
    helm: Path
    promtool: Path | None = None  # None: it could not be built here (devcluster/promtool.py)

    def kubectl_run(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
                           input=input, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise KubectlError(r.returncode, r.args, r.stdout, r.stderr)
        return r

    def env(self) -> dict[str, str]:
        return dict(os.environ, KUBECONFIG=str(self.kubeconfig))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """Its own control plane in a temp folder on free ports, so it never clashes with a
    `make cluster-up` one; torn down (processes and data) at the end of the session."""
    d = tmp_path_factory.mktemp("devcluster")
    try:
        state = devcluster.up(d)
    except devcluster.ClusterError as exc:
        pytest.fail(f"local control plane did not start: {exc}")
    tools = devcluster.build()
    try:
        yield Cluster(dir=d, kubeconfig=d / "kubeconfig", server=state.server,
                      kubectl=tools["kubectl"], helm=tools["helm"], promtool=tools.get("promtool"))
    finally:
        devcluster.down(d)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests are skipped (visibly) where CUDA is absent."""
    gpu_items = [i for i in items if "gpu" in i.keywords]
    if not gpu_items:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch means no CUDA
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA (run `make gpu-test` on a GPU machine)")
        for item in gpu_items:
            item.add_marker(skip)
