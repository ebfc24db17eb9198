"""The Helm chart on a cluster, and a kubeconfig that acts as the chart's ServiceAccount.

The local control plane has no kubelet, so the chart's operator Pod stays Pending; the
demo and the chart tests run the operator process here instead, authenticated with a
token the TokenRequest API issues for the chart's ServiceAccount. The operator then has
exactly the chart's RBAC and nothing more, which is what proves the RBAC sufficient.

Stdlib only, like devcluster.py beside it.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import devcluster  # beside this file

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kernel-warmup"
CRD_NAME = "kernelwarmups.kernelwarmup.dev"


class ChartError(RuntimeError):
    pass


@dataclass(frozen=True)
class Tools:
    """The helm and kubectl binaries and the (admin) kubeconfig they act with."""

    helm: Path
    kubectl: Path
    kubeconfig: Path

    def _run(self, argv: list[str], what: str, input: str | None, check: bool, timeout_s: float) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout_s)
        if check and r.returncode != 0:
            raise ChartError(f"{what} {' '.join(argv[1:])} failed (exit {r.returncode}):\n{r.stderr.strip()}")
        return r

    def helm_run(self, *args: str, check: bool = True, timeout_s: float = 120) -> subprocess.CompletedProcess:
        return self._run([str(self.helm), f"--kubeconfig={self.kubeconfig}", *args], "helm", None, check, timeout_s)

    def kubectl_run(self, *args: str, input: str | None = None, check: bool = True,
                    timeout_s: float = 60) -> subprocess.CompletedProcess:
        return self._run([str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args], "kubectl", input, check, timeout_s)


def fullname(release: str, chart: str = "kernel-warmup") -> str:
    """The chart's name for its objects (ServiceAccount, Deployment, RBAC): _helpers.tpl."""
    return release if chart in release else f"{release}-{chart}"[:63].rstrip("-")


def leader_flags(release: str, namespace: str) -> tuple[str, ...]:
    """The chart's leader-election flags (templates/deployment.yaml) for an operator run
    outside a Pod, where the downward API's $POD_NAMESPACE is not set."""
    return ("--leader-elect", f"--leader-elect-resource-namespace={namespace}",
            f"--leader-elect-resource-name={fullname(release)}")


def install(tools: Tools, release: str, namespace: str, *extra: str, chart: Path = CHART) -> str:
    """`helm upgrade --install` (idempotent, so `make demo` can run twice); returns helm's
    output (the NOTES). Waits for the CRD from crds/ to be Established."""
    out = tools.helm_run("upgrade", "--install", release, str(chart), "--namespace", namespace,
                         "--create-namespace", *extra).stdout
    devcluster.wait_crd_established(tools.kubectl_run, CRD_NAME)
    return out


def service_account_kubeconfig(tools: Tools, namespace: str, service_account: str, dest: Path,
                               duration: str = "2h") -> Path:
    """A kubeconfig for the same API server that authenticates with a bound token of
    ``service_account`` (TokenRequest API), trusting the admin kubeconfig's CA."""
    view = json.loads(tools.kubectl_run("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = dict(view["clusters"][0]["cluster"])
    if not (cluster.get("certificate-authority") or cluster.get("certificate-authority-data")):
        raise ChartError(f"{tools.kubeconfig}: the current cluster has no certificate-authority to trust")
    token = tools.kubectl_run("create", "token", service_account, "-n", namespace,
                              f"--duration={duration}").stdout.strip()
    if not token:
        raise ChartError(f"kubectl create token {service_account} -n {namespace} returned no token")
    user = f"system:serviceaccount:{namespace}:{service_account}"
    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "cluster", "user": user, "namespace": namespace}}],
        "current-context": "sa",
    }
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(cfg, indent=2))
    dest.chmod(0o600)
    return dest
