"""`kernel-warmup-operator --kubeconfig FILE` on its own (issue 11, item 11): it used to fail
to log in ("Ran out of valid credentials") unless $KUBECONFIG was set as well."""

from __future__ import annotations

import pytest
from operator_process import OperatorProcess
from operator_support import apply, install_crd, kernelwarmup, namespace, template_of, vllm_deployment, wait_for

from warmup_operator.core import names

pytestmark = [pytest.mark.cluster, pytest.mark.reliability]
RESYNC_S = 1.0


def test_kubeconfig_flag_works_without_the_env_var(cluster, tmp_path):
    install_crd(cluster)
    ns = namespace(cluster, "trust-kubeconfig")
    apply(cluster, vllm_deployment("srv", ns, opt_in="kw", labels={"warm": "yes"}))
    with OperatorProcess(cluster.kubeconfig, tmp_path / "op.log", namespaces=(ns,), resync_seconds=RESYNC_S,
                         kubeconfig_env=False) as op:
        apply(cluster, kernelwarmup("kw", ns))
        wait_for("injection by an operator given only --kubeconfig", lambda: names.ANN_HASH in (
            template_of(cluster, "srv", ns)["metadata"].get("annotations") or {}), timeout_s=60)
        assert "Ran out of valid credentials" not in op.log_tail(200)
        cluster.kubectl_run("delete", "kernelwarmup", "kw", "-n", ns, "--wait=true", "--timeout=30s")
