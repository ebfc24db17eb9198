"""Every flag and environment variable of the operator, read once into ``OperatorConfig``.

Environment variables give the defaults (the chart sets some of them), flags override
them. ``current()`` is what the handlers read; ``__main__`` installs the parsed config
with ``use()`` before kopf starts. Nothing else in the operator reads ``os.environ``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Optional

from warmup_operator.core import names
from warmup_operator.core.lease import Timing
from warmup_operator.core.prewarm import JobBounds
from warmup_operator.core.trust import (DEFAULT_HOSTPATH_ALLOWED, DEFAULT_WARMER_PYTHONS, TrustPolicy, clean_abs_path,
                                         python_entry_problem)

LOG_FORMATS = ("json", "plain", "full")


# --- the admission webhook (issue 13; webhook.py, certs.py) ---------------------------------


@dataclass(frozen=True)
class WebhookConfig:
    port: int = 0  # --webhook-port / $KERNEL_WARMUP_WEBHOOK_PORT; 0: no webhook (the controller alone injects)
    bind: str = "127.0.0.1"  # --webhook-bind / $KERNEL_WARMUP_WEBHOOK_BIND, else $POD_IP, else loopback
    # --webhook-host / $KERNEL_WARMUP_WEBHOOK_HOSTS: the names the API server calls it by
    # (the made certificate's SANs; default: the bind address)
    hosts: tuple[str, ...] = ()
    # --webhook-configuration / $KERNEL_WARMUP_WEBHOOK_CONFIGURATION: the
    # MutatingWebhookConfiguration whose caBundle the operator fills ('': cert-manager does)
    configuration: str = ""
    # --webhook-cert-dir / $KERNEL_WARMUP_WEBHOOK_CERT_DIR: tls.crt and tls.key from there
    # (cert-manager's Secret) instead of a certificate made at start-up
    cert_dir: str = ""

    @property
    def enabled(self) -> bool:
        return self.port > 0

    @property
    def cert_hosts(self) -> tuple[str, ...]:
        return self.hosts or (self.bind,)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "WebhookConfig":
        d = cls()
        return cls(port=int(env.get("KERNEL_WARMUP_WEBHOOK_PORT", d.port)),
                   bind=env.get("KERNEL_WARMUP_WEBHOOK_BIND") or env.get("POD_IP") or d.bind,
                   hosts=_env_list(env, "KERNEL_WARMUP_WEBHOOK_HOSTS", d.hosts),
                   configuration=env.get("KERNEL_WARMUP_WEBHOOK_CONFIGURATION", d.configuration),
                   cert_dir=env.get("KERNEL_WARMUP_WEBHOOK_CERT_DIR", d.cert_dir))

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: "WebhookConfig") -> "WebhookConfig":
        return cls(port=args.webhook_port, bind=args.webhook_bind, hosts=tuple(args.webhook_host or base.hosts),
                   configuration=args.webhook_configuration, cert_dir=args.webhook_cert_dir)


def add_webhook_flags(ap: argparse.ArgumentParser, d: WebhookConfig) -> None:
    ap.add_argument("--webhook-port", type=int, default=d.port,
                    help="serve the mutating admission webhook (HTTPS) on this port; 0: no webhook")
    ap.add_argument("--webhook-bind", default=d.bind, help="address the webhook listens on")
    ap.add_argument("--webhook-host", action="append", metavar="NAME",
                    help="a DNS name or IP the API server calls the webhook by (repeatable; the certificate's names)")
    ap.add_argument("--webhook-configuration", default=d.configuration, metavar="NAME",
                    help="MutatingWebhookConfiguration whose caBundle the operator fills with its CA")
    ap.add_argument("--webhook-cert-dir", default=d.cert_dir, metavar="DIR",
                    help="use DIR/tls.crt and DIR/tls.key (e.g. from cert-manager) instead of making a certificate")


@dataclass(frozen=True)
class LeaderElection:
    """--leader-elect: replicas share a Lease and only its holder runs the controller
    handlers (leader.py, replica.py); every replica serves admission and metrics."""

    enabled: bool = False  # --leader-elect / $KERNEL_WARMUP_LEADER_ELECT=1
    lease_name: str = "kernel-warmup-operator"  # --leader-elect-resource-name
    namespace: str = ""  # --leader-elect-resource-namespace / $POD_NAMESPACE (the chart sets it)
    identity: str = ""  # $POD_NAME (the chart sets it), else the host name; a random suffix is added
    timing: Timing = Timing()  # --leader-elect-lease-duration / -renew-deadline / -retry-period


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # --namespace (repeatable); empty: the whole cluster
    kubeconfig: Optional[str] = None  # --kubeconfig, else $KUBECONFIG
    in_cluster: bool = False  # $KUBERNETES_SERVICE_HOST set: use the Pod's ServiceAccount
    liveness: str = "http://0.0.0.0:8081/healthz"  # --liveness / $KERNEL_WARMUP_LIVENESS
    metrics_port: int = 9090  # --metrics-port / $KERNEL_WARMUP_METRICS_PORT (0: off)
    bootstrap_image: str = names.DEFAULT_BOOTSTRAP_IMAGE  # --bootstrap-image / $KERNEL_WARMUP_BOOTSTRAP_IMAGE
    log_format: str = "json"  # --log-format / $KERNEL_WARMUP_LOG_FORMAT
    verbose: bool = False  # --verbose
    resync_seconds: float = 10.0  # $KERNEL_WARMUP_RESYNC_SECONDS
    workers: int = 16  # $KERNEL_WARMUP_WORKERS: kopf's handler threads (and API connections)
    # $KERNEL_WARMUP_STUCK_SECONDS: liveness fails once one reconcile runs longer (0: never)
    stuck_seconds: float = 300.0
    # --metrics-bind / $KERNEL_WARMUP_METRICS_BIND, else $POD_IP (the chart sets it), else loopback
    metrics_bind: str = "127.0.0.1"
    # --allow-warmer-image / $KERNEL_WARMUP_ALLOWED_WARMER_IMAGES, --allow-hostpath /
    # $KERNEL_WARMUP_ALLOWED_HOSTPATHS (comma-separated): what a KernelWarmup may ask for
    policy: TrustPolicy = TrustPolicy()
    # --prewarm-max-jobs / $KERNEL_WARMUP_PREWARM_MAX_JOBS, --prewarm-max-jobs-per-namespace /
    # $KERNEL_WARMUP_PREWARM_MAX_JOBS_PER_NAMESPACE: bounds on prewarm Jobs (core/prewarm.py)
    prewarm_bounds: JobBounds = JobBounds()
    leader: LeaderElection = LeaderElection()
    webhook: WebhookConfig = field(default_factory=WebhookConfig)  # the admission webhook (issue 13)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "OperatorConfig":
        d = cls()
        return cls(
            kubeconfig=env.get("KUBECONFIG") or None,
            in_cluster=bool(env.get("KUBERNETES_SERVICE_HOST")),
            liveness=env.get("KERNEL_WARMUP_LIVENESS", d.liveness),
            metrics_port=int(env.get("KERNEL_WARMUP_METRICS_PORT", d.metrics_port)),
            bootstrap_image=env.get("KERNEL_WARMUP_BOOTSTRAP_IMAGE", d.bootstrap_image),
            log_format=env.get("KERNEL_WARMUP_LOG_FORMAT", d.log_format),
            resync_seconds=float(env.get("KERNEL_WARMUP_RESYNC_SECONDS", d.resync_seconds)),
            workers=int(env.get("KERNEL_WARMUP_WORKERS", d.workers)),
            stuck_seconds=float(env.get("KERNEL_WARMUP_STUCK_SECONDS", d.stuck_seconds)),
            metrics_bind=env.get("KERNEL_WARMUP_METRICS_BIND") or env.get("POD_IP") or d.metrics_bind,
            policy=TrustPolicy(
                warmer_images=_env_list(env, "KERNEL_WARMUP_ALLOWED_WARMER_IMAGES", d.policy.warmer_images),
                hostpath_allowed=_env_list(env, "KERNEL_WARMUP_ALLOWED_HOSTPATHS", d.policy.hostpath_allowed),
                warmer_pythons=_env_list(env, "KERNEL_WARMUP_ALLOWED_WARMER_PYTHONS", d.policy.warmer_pythons)),
            prewarm_bounds=JobBounds(
                per_kernelwarmup=int(env.get("KERNEL_WARMUP_PREWARM_MAX_JOBS", d.prewarm_bounds.per_kernelwarmup)),
                per_namespace=int(env.get("KERNEL_WARMUP_PREWARM_MAX_JOBS_PER_NAMESPACE",
                                          d.prewarm_bounds.per_namespace))),
            leader=replace(d.leader, enabled=env.get("KERNEL_WARMUP_LEADER_ELECT", "") in ("1", "true"),
                           namespace=env.get("POD_NAMESPACE", ""), identity=env.get("POD_NAME", "")),
            webhook=WebhookConfig.from_env(env),
        )

    @classmethod
    def from_args(cls, argv: Optional[Iterable[str]] = None, env: Mapping[str, str] = os.environ) -> "OperatorConfig":
        base = cls.from_env(env)
        parser = build_parser(base)
        args = parser.parse_args(list(argv) if argv is not None else None)
        policy = TrustPolicy(warmer_images=tuple(args.allow_warmer_image or base.policy.warmer_images),
                             hostpath_allowed=tuple(args.allow_hostpath or base.policy.hostpath_allowed),
                             warmer_pythons=tuple(args.allow_warmer_python or base.policy.warmer_pythons))
        bad = [p for p in policy.hostpath_allowed if not clean_abs_path(p)]
        if bad:
            parser.error(f"--allow-hostpath {bad[0]!r}: give a normalised absolute path (no '//', '.', '..' "
                         "or trailing '/')")
        problems = [p for p in map(python_entry_problem, policy.warmer_pythons) if p]
        if problems:
            parser.error(f"--allow-warmer-python {problems[0]}")
        if min(args.prewarm_max_jobs, args.prewarm_max_jobs_per_namespace) < 0:  # from the env: not through _count
            parser.error("--prewarm-max-jobs, --prewarm-max-jobs-per-namespace ($KERNEL_WARMUP_PREWARM_MAX_JOBS*): "
                         "give 0 (no bound) or a positive count")
        leader = _leader_from_args(parser, args, base.leader)
        return replace(base, leader=leader, namespaces=tuple(args.namespace), kubeconfig=args.kubeconfig or base.kubeconfig,
                       liveness=args.liveness, metrics_port=args.metrics_port, bootstrap_image=args.bootstrap_image,
                       log_format=args.log_format, verbose=args.verbose, metrics_bind=args.metrics_bind,
                       policy=policy, webhook=WebhookConfig.from_args(args, base.webhook),
                       prewarm_bounds=JobBounds(args.prewarm_max_jobs, args.prewarm_max_jobs_per_namespace))


def _count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give 0 (no bound) or a positive count")
    return n


def _env_list(env: Mapping[str, str], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = env.get(key)
    return default if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def _leader_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      base: LeaderElection) -> LeaderElection:
    timing = Timing(lease_s=args.leader_elect_lease_duration, renew_deadline_s=args.leader_elect_renew_deadline,
                    retry_s=args.leader_elect_retry_period)
    out = replace(base, enabled=args.leader_elect or base.enabled, lease_name=args.leader_elect_resource_name,
                  namespace=args.leader_elect_resource_namespace or base.namespace, timing=timing)
    if out.enabled and (problem := timing.problem()):
        parser.error(problem)
    if out.enabled and not out.namespace:
        parser.error("--leader-elect needs the Lease's namespace: --leader-elect-resource-namespace NS "
                     "(in a Pod the chart sets $POD_NAMESPACE)")
    return out


def _add_leader_flags(ap: argparse.ArgumentParser, d: LeaderElection) -> None:
    g = ap.add_argument_group("leader election (several replicas, one runs the controller)")
    g.add_argument("--leader-elect", action="store_true",
                   help="hold a coordination.k8s.io Lease to run the controller handlers; replicas without it "
                        "wait (and still serve admission, liveness and metrics)")
    g.add_argument("--leader-elect-resource-name", default=d.lease_name, help="the Lease's name")
    g.add_argument("--leader-elect-resource-namespace", default=d.namespace,
                   help="the Lease's namespace (default: $POD_NAMESPACE)")
    g.add_argument("--leader-elect-lease-duration", type=float, default=d.timing.lease_s,
                   help="seconds a standby waits on an unrenewed Lease before taking it")
    g.add_argument("--leader-elect-renew-deadline", type=float, default=d.timing.renew_deadline_s,
                   help="seconds the leader keeps trying to renew before it stops (exits)")
    g.add_argument("--leader-elect-retry-period", type=float, default=d.timing.retry_s,
                   help="seconds between tries to acquire or renew")


def build_parser(defaults: OperatorConfig) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kernel-warmup-operator",
                                 description="Inject kernel warmup into the workloads that KernelWarmup resources select.")
    ap.add_argument("--namespace", "-n", action="append", default=[],
                    help="watch only this namespace (repeatable); default: the whole cluster")
    ap.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    ap.add_argument("--liveness", default=defaults.liveness, help="liveness endpoint URL served by kopf ('' to disable)")
    ap.add_argument("--metrics-port", type=int, default=defaults.metrics_port, help="Prometheus metrics port (0 to disable)")
    ap.add_argument("--bootstrap-image", default=defaults.bootstrap_image,
                    help="image with the warmer package, run as the bootstrap init container")
    ap.add_argument("--metrics-bind", default=defaults.metrics_bind,
                    help="address the metrics port listens on (default: $POD_IP, else 127.0.0.1)")
    ap.add_argument("--allow-warmer-image", action="append", metavar="IMAGE",
                    help="an image spec.warmer.image may name (repeatable; 'registry/team/*' allows a prefix); "
                         "default none: the warmer always runs in the serving container's image")
    ap.add_argument("--allow-warmer-python", action="append", metavar="PYTHON",
                    help="an interpreter spec.warmer.python may name, exactly (repeatable; default "
                         f"{', '.join(DEFAULT_WARMER_PYTHONS)}); unset in a CR, the serving container's own")
    ap.add_argument("--allow-hostpath", action="append", metavar="PATH",
                    help="a node folder spec.cache.hostPath.path may name, exactly (repeatable; default "
                         f"{', '.join(DEFAULT_HOSTPATH_ALLOWED)})")
    ap.add_argument("--prewarm-max-jobs", type=_count, default=defaults.prewarm_bounds.per_kernelwarmup,
                    help="most prewarm Jobs one KernelWarmup may have at once (0: no bound)")
    ap.add_argument("--prewarm-max-jobs-per-namespace", type=_count, default=defaults.prewarm_bounds.per_namespace,
                    help="most prewarm Jobs of all KernelWarmups in one namespace at once (0: no bound)")
    add_webhook_flags(ap, defaults.webhook)
    ap.add_argument("--log-format", choices=LOG_FORMATS, default=defaults.log_format)
    ap.add_argument("--verbose", "-v", action="store_true")
    _add_leader_flags(ap, defaults.leader)
    return ap


_current: Optional[OperatorConfig] = None  # use() sets it; read from the environment on first use otherwise


def current() -> OperatorConfig:
    global _current
    if _current is None:
        _current = OperatorConfig.from_env()
    return _current


def use(config: OperatorConfig) -> None:
    global _current
    _current = config
