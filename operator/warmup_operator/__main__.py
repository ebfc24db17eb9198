"""`python -m warmup_operator` / `kernel-warmup-operator`: read the config, start kopf."""

from __future__ import annotations

import logging
import sys
from typing import Iterable, Optional

import kopf

from warmup_operator import config
from warmup_operator import handlers  # importing it registers the kopf handlers

LOG_FORMATS = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}


def main(argv: Optional[Iterable[str]] = None) -> int:
    cfg = config.OperatorConfig.from_args(argv)
    config.use(cfg)
    handlers.register_resync(cfg.resync_seconds)
    if cfg.kubeconfig:
        from warmup_operator.kube import use_kubeconfig
        use_kubeconfig(cfg.kubeconfig)
    if cfg.webhook.enabled:  # the admission webhook's handlers (issue 13; kopf needs them before it starts)
        from warmup_operator import webhook
        webhook.register(handlers.controller)
    kopf.configure(verbose=cfg.verbose, log_format=LOG_FORMATS[cfg.log_format])
    if not cfg.verbose:  # kopf logs every handler run at INFO; keep the operator's own lines
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if cfg.metrics_port:
        from prometheus_client import start_http_server
        start_http_server(cfg.metrics_port, addr=cfg.metrics_bind)
    if cfg.leader.enabled:  # several replicas: only the Lease holder runs the controller
        from warmup_operator.replica import run_replica
        return run_replica(cfg)
    kopf.run(
        standalone=True,
        clusterwide=not cfg.namespaces,
        namespaces=list(cfg.namespaces),
        liveness_endpoint=cfg.liveness or None,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
