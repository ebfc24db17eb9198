"""OperatorConfig: every flag and environment variable in one typed object."""

from __future__ import annotations

import pytest

from warmup_operator.config import OperatorConfig
from warmup_operator.core import names


@pytest.mark.parametrize("env, field, want", [
    ({}, "bootstrap_image", names.DEFAULT_BOOTSTRAP_IMAGE),
    ({"KERNEL_WARMUP_BOOTSTRAP_IMAGE": "r/i:1"}, "bootstrap_image", "r/i:1"),
    ({}, "resync_seconds", 10.0),
    ({"KERNEL_WARMUP_RESYNC_SECONDS": "2.5"}, "resync_seconds", 2.5),
    ({}, "workers", 16),
    ({"KERNEL_WARMUP_WORKERS": "4"}, "workers", 4),
    ({"KERNEL_WARMUP_METRICS_PORT": "0"}, "metrics_port", 0),
    ({"KERNEL_WARMUP_LIVENESS": ""}, "liveness", ""),
    ({"KERNEL_WARMUP_LOG_FORMAT": "plain"}, "log_format", "plain"),
    ({"KUBECONFIG": "/k"}, "kubeconfig", "/k"),
    ({}, "in_cluster", False),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "in_cluster", True),
])
def test_from_env(env, field, want):
    assert getattr(OperatorConfig.from_env(env), field) == want


def test_flags_override_the_environment():
    env = {"KERNEL_WARMUP_BOOTSTRAP_IMAGE": "env/i:1", "KERNEL_WARMUP_METRICS_PORT": "1234", "KUBECONFIG": "/env"}
    cfg = OperatorConfig.from_args(["-n", "a", "--namespace", "b", "--bootstrap-image", "flag/i:2",
                                    "--kubeconfig", "/flag", "--log-format", "full", "-v"], env)
    assert cfg.namespaces == ("a", "b") and cfg.bootstrap_image == "flag/i:2" and cfg.kubeconfig == "/flag"
    assert cfg.metrics_port == 1234 and cfg.log_format == "full" and cfg.verbose


def test_no_flags_means_the_environment():
    env = {"KERNEL_WARMUP_BOOTSTRAP_IMAGE": "env/i:1", "KUBECONFIG": "/env", "KERNEL_WARMUP_RESYNC_SECONDS": "3"}
    assert OperatorConfig.from_args([], env) == OperatorConfig.from_env(env)


def test_a_bad_flag_is_refused():
    with pytest.raises(SystemExit):
        OperatorConfig.from_args(["--log-format", "xml"], {})
