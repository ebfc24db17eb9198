"""The operator's settings: flags and environment variables."""

from __future__ import annotations

import argparse
import os
from typing import Iterable, Optional

from warmup_operator.core import names



CONFIG = {
    "bootstrap_image": os.environ.get("KERNEL_WARMUP_BOOTSTRAP_IMAGE", names.DEFAULT_BOOTSTRAP_IMAGE),
    "resync_seconds": float(os.environ.get("KERNEL_WARMUP_RESYNC_SECONDS", "10")),
}


def parse_args(argv: Optional[Iterable[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="kernel-warmup-operator", description="Inject kernel warmup into the workloads that KernelWarmup resources select.")
    ap.add_argument("--namespace", "-n", action="append", default=[],
                    help="watch only this namespace (repeatable); default: the whole cluster")
    ap.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    ap.add_argument("--liveness", default=os.environ.get("KERNEL_WARMUP_LIVENESS", "http://0.0.0.0:8081/healthz"),
                    help="liveness endpoint URL served by kopf ('' to disable)")
    ap.add_argument("--metrics-port", type=int, default=int(os.environ.get("KERNEL_WARMUP_METRICS_PORT", "9090")),
                    help="Prometheus metrics port (0 to disable)")
    ap.add_argument("--bootstrap-image", default=CONFIG["bootstrap_image"],
                    help="image with the warmer package, run as the bootstrap init container")
    ap.add_argument("--log-format", choices=("json", "plain", "full"), default=os.environ.get("KERNEL_WARMUP_LOG_FORMAT", "json"))
    ap.add_argument("--verbose", "-v", action="store_true")
    return ap.parse_args(list(argv) if argv is not None else None)
