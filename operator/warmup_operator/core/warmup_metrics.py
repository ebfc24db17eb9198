"""A finished warmup as metric samples, and label values kept to a bounded set (pure).

metrics.py turns a ``WarmupSample`` into Prometheus series. Label values come from user
objects (KernelWarmup names, model paths, node names), so each label has a budget of
distinct values and each metric family a budget of label combinations; past either, the
value reads ``other``: a cluster with thousands of nodes cannot grow the series count
without bound.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Optional

from kernel_warmer.report import CACHE_STATES, PHASES
from warmup_operator.core.status import WarmupObservation, failure_reason

OTHER = "other"
# Distinct values each label may take before later ones read OTHER.
LABEL_LIMITS = {"kernelwarmup": 200, "model": 100, "node": 500}
COMBINATION_LIMIT = 2000  # label combinations of one family (per process)
MAX_VALUE_LEN = 128


@dataclass(frozen=True)
class WarmupSample:
    outcome: str  # succeeded | failed
    kernelwarmup: str  # namespace/name
    model: str
    node: str
    seconds: Optional[float]  # the whole run
    phases: dict[str, float] = field(default_factory=dict)  # PHASES -> seconds
    cache: str = ""  # warm | cold | "" (not checked)
    compiled: int = 0  # Triton variants built by this run
    hit: int = 0  # Triton variants found in the cache
    reason: str = ""  # a failed run's reason (status.FAILURE_REASONS' words)


def model_label(spec: Optional[dict]) -> str:
    """A short name for a KernelWarmup's model: the folder of its config.json
    (``/models/Meta-Llama-3.1-8B/config.json`` -> ``Meta-Llama-3.1-8B``), ``layers`` for
    explicit layer shapes, ``unknown`` otherwise."""
    model = (spec or {}).get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict):
        return "unknown"
    path = model.get("configPath")
    if isinstance(path, str) and path.strip():
        p = PurePosixPath(path.strip())
        name = p.parent.name if p.name == "config.json" else p.name
        return name or "unknown"
    return "layers" if model.get("layers") else "unknown"


def sample(obs: WarmupObservation, model: str) -> WarmupSample:
    s = obs.summary or {}
    phases = s.get("phases") if isinstance(s.get("phases"), dict) else {}
    triton = s.get("triton") if isinstance(s.get("triton"), dict) else {}
    return WarmupSample(
        outcome="succeeded" if obs.succeeded else "failed",
        kernelwarmup=f"{obs.namespace}/{obs.cr}", model=model, node=obs.node or "unknown",
        seconds=obs.seconds,
        phases={k: float(v) for k, v in phases.items() if k in PHASES and isinstance(v, (int, float))
                and not isinstance(v, bool)},
        cache=s["cache"] if s.get("cache") in CACHE_STATES else "",
        compiled=_count(triton.get("compiled")), hit=_count(triton.get("hit")),
        reason="" if obs.succeeded else failure_reason(s.get("error")),
    )


def _count(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


class LabelBudget:
    """Maps label values to themselves while each label and the family are under budget."""

    def __init__(self, limits: Optional[dict[str, int]] = None, combinations: int = COMBINATION_LIMIT):
        self.limits = dict(LABEL_LIMITS if limits is None else limits)
        self.combinations = combinations
        self._values: dict[str, set[str]] = {}
        self._combos: set[tuple] = set()
        self._lock = threading.Lock()

    def __call__(self, **labels: str) -> dict[str, str]:
        with self._lock:
            out = {k: self._value(k, v) for k, v in labels.items()}
            key = tuple(sorted(out.items()))
            if key not in self._combos:
                if len(self._combos) >= self.combinations:
                    return {k: (v if k not in self.limits else OTHER) for k, v in out.items()}
                self._combos.add(key)
            return out

    def _value(self, label: str, value: str) -> str:
        value = (value or "unknown")[:MAX_VALUE_LEN]
        limit = self.limits.get(label)
        if limit is None:
            return value
        seen = self._values.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) >= limit:
            return OTHER
        seen.add(value)
        return value
