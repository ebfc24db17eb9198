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


def test_leader_election_flags_and_environment():
    env = {"POD_NAMESPACE": "kw-system", "POD_NAME": "op-abc"}
    assert not OperatorConfig.from_args([], env).leader.enabled
    cfg = OperatorConfig.from_args(["--leader-elect", "--leader-elect-lease-duration", "6",
                                    "--leader-elect-renew-deadline", "4", "--leader-elect-retry-period", "1"], env)
    assert cfg.leader.enabled and cfg.leader.namespace == "kw-system" and cfg.leader.identity == "op-abc"
    assert (cfg.leader.timing.lease_s, cfg.leader.timing.renew_deadline_s, cfg.leader.timing.retry_s) == (6, 4, 1)
    assert OperatorConfig.from_env({"KERNEL_WARMUP_LEADER_ELECT": "1", **env}).leader.enabled


@pytest.mark.parametrize("argv, env, flag", [
    (["--leader-elect"], {}, "--leader-elect-resource-namespace"),
    (["--leader-elect", "--leader-elect-renew-deadline", "20"], {"POD_NAMESPACE": "x"}, "--leader-elect-renew-deadline"),
])
def test_bad_leader_election_settings_name_the_flag(argv, env, flag, capsys):
    with pytest.raises(SystemExit):
        OperatorConfig.from_args(argv, env)
    assert flag in capsys.readouterr().err
