"""`python -m warmup_operator` / `kernel-warmup-operator`: configure kopf and run the handlers."""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, Optional

import kopf

from warmup_operator import handlers  # noqa: F401 - importing it registers the kopf handlers
from warmup_operator.config import CONFIG, parse_args


def main(argv: Optional[Iterable[str]] = None) -> int:
    args = parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    CONFIG["bootstrap_image"] = args.bootstrap_image
    fmt = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}[args.log_format]
    kopf.configure(verbose=args.verbose, log_format=fmt)
    if not args.verbose:  # kopf logs every handler run at INFO; keep the operator's own lines
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        from prometheus_client import start_http_server
        start_http_server(args.metrics_port)
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
