"""Prometheus metrics (served by ``prometheus_client`` on --metrics-port): every family the
operator exports is declared here, once.

Conventions (checked on the live ``/metrics`` by tests/integration/test_metrics.py, with
``promtool check metrics`` and the project's own exposition check): ``kernel_warmup_``
prefix, the unit in the name (``_seconds``), ``_total`` on counters, label values from a
fixed set or through a ``LabelBudget`` (core/warmup_metrics.py). Series whose labels are a
known enum are created at start, so dashboards and alerts see zeros, not gaps.
"""

from __future__ import annotations

from typing import Any, Optional

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from kernel_warmer.report import CACHE_STATES, PHASES
from warmup_operator.bounded import BoundedDict
from warmup_operator.core.warmup_metrics import LabelBudget, WarmupSample, model_label, sample

disable_created_metrics()  # no *_created series: nothing reads them, and they double the count

WARMUP_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
ADMISSION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
OUTCOMES = ("succeeded", "failed")
RECONCILE_ERROR_REASONS = ("invalid_spec", "injection", "apply", "workload")
ADMISSION_FAILURE_REASONS = ("error", "timeout", "refused")
WORKLOAD = ("kernelwarmup", "model", "node", "outcome")
PREWARM_OUTCOMES = ("succeeded", "failed", "timeout", "superseded")

INJECTIONS = Counter("kernel_warmup_injections_total", "Pod-template changes applied by the operator",
                     ["kind", "action"])
RECONCILE_ERRORS = Counter("kernel_warmup_reconcile_errors_total", "Reconciliations that failed, by reason",
                           ["reason"])
API_RETRIES = Counter("kernel_warmup_api_retries_total", "API requests retried after a 409/429/5xx or a dropped connection",
                      ["status"])
WARMUPS = Counter("kernel_warmup_warmups_total", "Finished warmer runs observed in Pods", list(WORKLOAD))
WARMUP_SECONDS = Histogram("kernel_warmup_warmup_seconds", "Whole warmer runs, from the Pods' summaries",
                           list(WORKLOAD), buckets=WARMUP_BUCKETS)
PHASE_SECONDS = Histogram("kernel_warmup_warmup_phase_seconds",
                          "Warmer run phases (check, triton_compile, flashinfer_jit, flashinfer_tune)",
                          ["phase", *WORKLOAD], buckets=WARMUP_BUCKETS)
WARMUP_FAILURES = Counter("kernel_warmup_warmup_failures_total", "Failed warmer runs, by reason",
                          ["kernelwarmup", "reason"])
CACHE_CHECKS = Counter("kernel_warmup_cache_checks_total", "Warmer cache checks per node: warm (nothing to do) or cold",
                       ["node", "result"])
TRITON_VARIANTS = Counter("kernel_warmup_triton_variants_total", "Triton kernel variants per warmer run: compiled or hit",
                          ["kernelwarmup", "result"])
ADMISSION_SECONDS = Histogram("kernel_warmup_admission_seconds", "Admission webhook requests answered by this replica",
                              ["kind"], buckets=ADMISSION_BUCKETS)
ADMISSION_FAILURES = Counter("kernel_warmup_admission_failures_total",
                             "Admission requests this replica could not answer with an injection, by reason", ["reason"])
LEADER = Gauge("kernel_warmup_leader", "1 while this replica holds the leader Lease and runs the controller handlers")
LEADER_ACQUISITIONS = Counter("kernel_warmup_leader_acquisitions_total", "Times this replica acquired the leader Lease")
# the admission webhook (webhook.py): answers by kind and action (inject/remove/none/error)
ADMISSIONS = Counter("kernel_warmup_admissions_total", "Workload writes answered by the admission webhook",
                     ["kind", "action"])
PREWARM_SECONDS = Histogram("kernel_warmup_prewarm_seconds", "Prewarm Jobs, from their start to their end, by outcome",
                            ["outcome"], buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
PREWARMS = Counter("kernel_warmup_prewarms_total", "Prewarm Jobs ended, by outcome", ["outcome"])

for _outcome in PREWARM_OUTCOMES:
    PREWARMS.labels(_outcome)
for _reason in RECONCILE_ERROR_REASONS:
    RECONCILE_ERRORS.labels(_reason)
for _reason in ADMISSION_FAILURE_REASONS:
    ADMISSION_FAILURES.labels(_reason)

_budgets = {name: LabelBudget() for name in ("runs", "phases", "failures", "cache", "variants")}
_seen: BoundedDict = BoundedDict()  # the warmer runs counted (Pods are seen many times)


def observe_warmup(obs: Any, cr: Optional[Any]) -> bool:
    """Count each finished warmer run once (Pods are seen many times); True if new.
    ``obs`` is a core.status.WarmupObservation, ``cr`` its KernelWarmup's CRRecord."""
    if not _seen.add(obs.key):
        return False
    record(sample(obs, model_label(getattr(cr, "spec", None))))
    return True


def record(s: WarmupSample) -> None:
    run = _budgets["runs"](kernelwarmup=s.kernelwarmup, model=s.model, node=s.node, outcome=s.outcome)
    WARMUPS.labels(**run).inc()
    if s.seconds is not None:
        WARMUP_SECONDS.labels(**run).observe(s.seconds)
    for phase in PHASES:
        if phase in s.phases:
            labels = _budgets["phases"](phase=phase, kernelwarmup=s.kernelwarmup, model=s.model, node=s.node,
                                        outcome=s.outcome)
            PHASE_SECONDS.labels(**labels).observe(s.phases[phase])
    if s.reason:
        WARMUP_FAILURES.labels(**_budgets["failures"](kernelwarmup=s.kernelwarmup, reason=s.reason)).inc()
    if s.cache in CACHE_STATES:
        CACHE_CHECKS.labels(**_budgets["cache"](node=s.node, result=s.cache)).inc()
    for result, n in (("compiled", s.compiled), ("hit", s.hit)):
        if n:
            TRITON_VARIANTS.labels(**_budgets["variants"](kernelwarmup=s.kernelwarmup, result=result)).inc(n)
