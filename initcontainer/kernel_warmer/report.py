"""The warmer's result: a JSON summary on stdout and in the termination-message file.

The operator parses termination messages with ``WarmupSummary.from_json``, so this module
imports only the standard library. Kubernetes truncates a termination message at 4096
bytes; ``compact_json`` always fits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

Status = Literal["ok", "failed", "skipped"]
TERMINATION_LIMIT = 4096


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
    error: Optional[str] = None
    # Per-variant and per-layer detail; dropped first when space is short.
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cacheKey"] = d.pop("cache_key")
        d["seconds"] = round(self.seconds, 3)
        if d["error"] is None:
            del d["error"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def compact_json(self, limit: int = TERMINATION_LIMIT) -> str:
        """The summary in at most ``limit`` bytes: details go first, then FlashInfer's
        non-scalar fields, then the error is shortened."""
        d = self.to_dict()
        d.pop("details", None)
        text = _dumps(d)
        if len(text.encode()) <= limit:
            return text
        fi = d.get("flashinfer") or {}
        d["flashinfer"] = {k: v for k, v in fi.items() if isinstance(v, (str, int, float, bool)) or v is None}
        text = _dumps(d)
        if len(text.encode()) > limit:
            d["flashinfer"] = {k: d["flashinfer"][k] for k in ("status", "error") if k in d["flashinfer"]}
            for k in ("status", "error"):
                if isinstance(d["flashinfer"].get(k), str):
                    d["flashinfer"][k] = d["flashinfer"][k][:300]
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
            error=d.get("error"),
            details=dict(d.get("details") or {}),
        )


def _dumps(d: dict) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))
