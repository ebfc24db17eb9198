"""Prometheus metrics (served by ``prometheus_client`` on --metrics-port)."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Histogram

INJECTIONS = Counter("kernel_warmup_injections_total", "Pod-template changes applied by the operator",
                     ["kind", "action"])
RECONCILE_ERRORS = Counter("kernel_warmup_reconcile_errors_total", "Reconciliations that failed",
                           ["reason"])
WARMUP_SECONDS = Histogram("kernel_warmup_warmup_seconds", "Warmup duration reported by Pods' warmer summaries",
                           ["outcome"], buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600))
API_RETRIES = Counter("kernel_warmup_api_retries_total", "API requests retried after a 409/429/5xx or a dropped connection",
                      ["status"])
WARMUPS = Counter("kernel_warmup_warmups_total", "Warmer runs observed in Pods", ["outcome"])

_seen: set = set()
_seen_lock = threading.Lock()


def observe_warmup(key: tuple, succeeded: bool, seconds: float | None) -> bool:
    """Count each finished warmer run once (Pods are seen many times); True if new."""
    with _seen_lock:
        if key in _seen:
            return False
        _seen.add(key)
    outcome = "succeeded" if succeeded else "failed"
    WARMUPS.labels(outcome).inc()
    if seconds is not None:
        WARMUP_SECONDS.labels(outcome).observe(seconds)
    return True
