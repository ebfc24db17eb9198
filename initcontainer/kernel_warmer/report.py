"""The warmer's result: a JSON summary on stdout and in the termination-message file.

The operator parses termination messages with ``WarmupSummary.from_json``, so this module
imports only the standard library. Kubernetes truncates a termination message at 4096
bytes; ``compact_json`` always fits.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

Status = Literal["ok", "failed", "skipped"]
TERMINATION_LIMIT = 4096
# Where a run's seconds went (summary "phases"; the operator's
# kernel_warmup_warmup_phase_seconds): the cache check, vLLM's Triton variants,
# FlashInfer's JIT module builds, FlashInfer's autotuning, and the engine phase (the
# serving image's vLLM started with dummy weights: its whole start to stop, and the phases
# vLLM logs: model load, torch.compile, cache loads, CUDA-graph capture, engine init).
SERVER_PHASES = ("model_load", "compile", "compile_cache_load", "cuda_graphs", "init_engine")
PHASES = ("check", "triton_compile", "flashinfer_jit", "flashinfer_tune", "engine",
          *(f"vllm_{p}" for p in SERVER_PHASES))
# What the cache check found (summary "cache"): warm (nothing to do) or cold (warmed now).
CACHE_STATES = ("warm", "cold")
MAX_WARNINGS = 5  # in the termination message, each cut to 300 characters


@dataclass
class TritonCounts:
    compiled: int = 0  # variants whose binary this run built
    hit: int = 0  # variants already in the cache
    skipped: int = 0  # layers left out (sinks, ALiBi, ...)
    failed: int = 0


@dataclass
class WarmupSummary:
    status: Status = "ok"
    seconds: float = 0.0
    cache_key: str = ""
    triton: TritonCounts = field(default_factory=TritonCounts)
    flashinfer: dict[str, Any] = field(default_factory=dict)  # filled by the FlashInfer phase
    server: dict[str, Any] = field(default_factory=dict)  # the engine phase (kernel_warmer/server/)
    error: Optional[str] = None
    phases: dict[str, float] = field(default_factory=dict)  # PHASES -> seconds, those that ran
    cache: str = ""  # one of CACHE_STATES once the cache was checked
    # What the warmer ran with (kernel_warmer/versions.py Runtime.to_dict) and what it warns of
    # (a version no table row covers, a flag this vLLM release refuses, ...): also in the log.
    versions: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Per-variant and per-layer detail; dropped first when space is short.
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cacheKey"] = d.pop("cache_key")
        d["seconds"] = round(self.seconds, 3)
        if d["error"] is None:
            del d["error"]
        d["phases"] = {k: round(v, 3) for k, v in self.phases.items()}
        if not d["cache"]:
            del d["cache"]
        for k in ("versions", "warnings", "server"):
            if not d[k]:
                del d[k]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def compact_json(self, limit: int = TERMINATION_LIMIT) -> str:
        """The summary in at most ``limit`` bytes: details go first, then FlashInfer's
        non-scalar fields, then the error is shortened."""
        d = self.to_dict()
        d.pop("details", None)
        if d.get("warnings"):
            d["warnings"] = [w[:300] for w in d["warnings"][:MAX_WARNINGS]]
        text = _dumps(d)
        if len(text.encode()) <= limit:
            return text
        for part in ("flashinfer", "server"):
            if part in d:
                d[part] = {k: v for k, v in d[part].items() if isinstance(v, (str, int, float, bool)) or v is None}
        text = _dumps(d)
        if len(text.encode()) > limit:
            for part in ("flashinfer", "server"):
                if part in d:
                    d[part] = {k: (v[:300] if isinstance(v, str) else v) for k, v in d[part].items()
                               if k in ("status", "error", "reason", "seconds")}
            text = _dumps(d)
        if len(text.encode()) > limit and d.get("error"):
            room = max(0, len(d["error"].encode()) - (len(text.encode()) - limit) - 16)
            d["error"] = d["error"].encode()[:room].decode(errors="ignore") + "...[cut]"
            text = _dumps(d)
        return text

    @classmethod
    def from_json(cls, text: str) -> "WarmupSummary":
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("warmup summary must be a JSON object")
        status = d.get("status", "failed")
        if status not in ("ok", "failed", "skipped"):
            raise ValueError(f"warmup summary: unknown status {status!r}")
        t = d.get("triton") or {}
        return cls(
            status=status,
            seconds=float(d.get("seconds", 0.0)),
            cache_key=str(d.get("cacheKey", "")),
            triton=TritonCounts(**{k: int(t.get(k, 0)) for k in ("compiled", "hit", "skipped", "failed")}),
            flashinfer=dict(d.get("flashinfer") or {}),
            server=dict(d.get("server") or {}) if isinstance(d.get("server"), dict) else {},
            error=d.get("error"),
            phases=_phases(d.get("phases")),
            cache=d["cache"] if d.get("cache") in CACHE_STATES else "",
            versions=dict(d.get("versions") or {}) if isinstance(d.get("versions"), dict) else {},
            warnings=[str(w) for w in d.get("warnings") or [] if isinstance(w, str)][:MAX_WARNINGS],
            details=dict(d.get("details") or {}),
        )


def _phases(value: Any) -> dict[str, float]:
    """The known phases with finite, non-negative seconds (anything else is left out)."""
    if not isinstance(value, dict):
        return {}
    return {k: float(v) for k, v in value.items() if k in PHASES and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v) and v >= 0}


def _dumps(d: dict) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))
