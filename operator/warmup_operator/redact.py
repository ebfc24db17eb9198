"""Keeping env values (possible secrets) out of logs, Events and status."""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from warmup_operator.core.kinds import WorkloadKind



_SENSITIVE = re.compile(r"TOKEN|SECRET|PASSW|KEY|CREDENTIAL|AUTH|PRIVATE", re.IGNORECASE)
REDACTED = "<redacted>"


def env_literals(kind: WorkloadKind, obj: Any) -> list[str]:
    """Literal env values in the workload's pod templates that could be secrets: any value
    of an env var whose name looks sensitive, and every other value of 8+ characters."""
    from warmup_operator.core.targets import templates
    out = set()
    for _, t in templates(kind, obj or {}):
        spec = t.get("spec") or {}
        for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
            for e in c.get("env") or []:
                v = e.get("value")
                if isinstance(v, str) and (len(v) >= 8 or (len(v) >= 3 and _SENSITIVE.search(e.get("name", "")))):
                    out.add(v)
    return sorted(out, key=len, reverse=True)  # longest first: no partial leftovers


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret replaced, also as JSON-escaped by the API server (Go's
    encoder escapes quotes, backslashes and, HTML-safe, < > & as \\u003c \\u003e \\u0026)."""
    for s in secrets:
        quoted = json.dumps(s, ensure_ascii=False)[1:-1]
        go = quoted.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        for form in dict.fromkeys((s, quoted, go, json.dumps(s)[1:-1])):
            text = text.replace(form, REDACTED)
    return text
