"""A strict reader of the Prometheus text exposition format (version 0.0.4), and the
project's naming rules for its own families (test-only code).

It runs beside `promtool check metrics` (which lints names the same way, but is not
everywhere) and checks what promtool's linter does not: the syntax of every line, one
HELP/TYPE per family before its samples, no duplicate series, histogram buckets
cumulative up to ``+Inf`` = ``_count``, and that our label names are never ones that
grow without bound (Pod names, uids, messages).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
PREFIX = "kernel_warmup_"
UNBOUNDED_LABELS = {"pod", "uid", "message", "error", "hash", "container_id", "generation", "resource_version"}
TIME_WORDS = ("seconds", "duration", "latency", "time", "_ms", "millis")


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def parse(text: str) -> tuple[dict[str, Family], list[str]]:
    """Families by name, and every problem found (empty: the text is valid)."""
    families: dict[str, Family] = {}
    problems: list[str] = []
    series: set[tuple] = set()
    current: Family | None = None
    closed: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            current = _comment(line, n, families, closed, current, problems)
            continue
        got = _sample(line, n, problems)
        if got is None:
            continue
        name, labels, value = got
        fam = _family_of(name, families)
        if fam is None:
            problems.append(f"line {n}: sample {name} before any # TYPE of its family")
            continue
        if fam is not current:
            if fam.name in closed:
                problems.append(f"line {n}: samples of {fam.name} are not contiguous")
            current = fam
        key = (name, tuple(sorted(labels.items())))
        if key in series:
            problems.append(f"line {n}: duplicate series {name}{labels}")
        series.add(key)
        fam.samples.append((name, labels, value))
    for fam in families.values():
        problems += _family_problems(fam)
    return families, problems


def _comment(line: str, n: int, families: dict[str, Family], closed: set[str], current: Family | None,
             problems: list[str]) -> Family | None:
    parts = line.split(" ", 3)
    if len(parts) < 3 or parts[1] not in ("HELP", "TYPE"):
        return current  # a plain comment
    kind, name = parts[1], parts[2]
    if not NAME.fullmatch(name):
        problems.append(f"line {n}: bad metric name {name!r}")
    if current is not None and current.name != name:
        closed.add(current.name)
    fam = families.setdefault(name, Family(name))
    rest = parts[3] if len(parts) > 3 else ""
    if kind == "HELP":
        if fam.help is not None:
            problems.append(f"line {n}: second HELP for {name}")
        fam.help = rest
    else:
        if fam.samples or fam.type != "untyped":
            problems.append(f"line {n}: TYPE for {name} after its samples or twice")
        if rest not in TYPES:
            problems.append(f"line {n}: unknown type {rest!r} for {name}")
        fam.type = rest
    return fam


def _sample(line: str, n: int, problems: list[str]) -> tuple[str, dict[str, str], float] | None:
    m = NAME.match(line)
    if not m:
        problems.append(f"line {n}: not a sample: {line[:80]!r}")
        return None
    name, rest = m.group(0), line[m.end():]
    labels: dict[str, str] = {}
    if rest.startswith("{"):
        parsed = _labels(rest, n, problems)
        if parsed is None:
            return None
        labels, rest = parsed
    fields = rest.split()
    if not rest.startswith(" ") or len(fields) not in (1, 2):
        problems.append(f"line {n}: expected ' value [timestamp]' after {name}: {rest[:60]!r}")
        return None
    try:
        value = float(fields[0])
    except ValueError:
        problems.append(f"line {n}: bad value {fields[0]!r}")
        return None
    if len(fields) == 2 and not re.fullmatch(r"-?\d+", fields[1]):
        problems.append(f"line {n}: bad timestamp {fields[1]!r}")
    return name, labels, value


def _labels(rest: str, n: int, problems: list[str]) -> tuple[dict[str, str], str] | None:
    labels: dict[str, str] = {}
    i = 1
    while i < len(rest) and rest[i] != "}":
        m = LABEL.match(rest, i)
        if not m or rest[m.end():m.end() + 2] != '="':
            problems.append(f"line {n}: bad label at {rest[i:i + 30]!r}")
            return None
        key, i = m.group(0), m.end() + 2
        value = []
        while i < len(rest) and rest[i] != '"':
            if rest[i] == "\\":
                esc = rest[i + 1:i + 2]
                if esc not in ("\\", '"', "n"):
                    problems.append(f"line {n}: bad escape \\{esc} in label {key}")
                value.append({"n": "\n"}.get(esc, esc))
                i += 2
            else:
                value.append(rest[i])
                i += 1
        if i >= len(rest):
            problems.append(f"line {n}: unterminated value of label {key}")
            return None
        if key in labels or key.startswith("__"):
            problems.append(f"line {n}: label {key} repeated or reserved")
        labels[key] = "".join(value)
        i += 1
        if rest[i:i + 1] == ",":
            i += 1
    if i >= len(rest):
        problems.append(f"line {n}: unterminated label set")
        return None
    return labels, rest[i + 1:]


SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", ""),
            "counter": ("",), "gauge": ("",), "untyped": ("",)}


def _family_of(sample_name: str, families: dict[str, Family]) -> Family | None:
    for fam in families.values():
        if any(sample_name == fam.name + s for s in SUFFIXES.get(fam.type, ("",))):
            return fam
    return None


def _family_problems(fam: Family) -> list[str]:
    out = []
    if fam.help is None:
        out.append(f"{fam.name}: no HELP")
    if fam.type == "histogram":
        out += _histogram_problems(fam)
    return out


def _histogram_problems(fam: Family) -> list[str]:
    out = []
    groups: dict[tuple, dict[str, object]] = {}
    for name, labels, value in fam.samples:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        g = groups.setdefault(key, {"buckets": []})
        if name.endswith("_bucket"):
            if "le" not in labels:
                out.append(f"{fam.name}{dict(key)}: a bucket without le")
                continue
            g["buckets"].append((float(labels["le"]), value))  # type: ignore[union-attr]
        else:
            g[name[len(fam.name):]] = value
    for key, g in groups.items():
        buckets = sorted(g["buckets"])  # type: ignore[arg-type]
        where = f"{fam.name}{dict(key)}"
        if not buckets or not math.isinf(buckets[-1][0]):
            out.append(f"{where}: no +Inf bucket")
            continue
        counts = [c for _, c in buckets]
        if counts != sorted(counts):
            out.append(f"{where}: bucket counts are not cumulative")
        if g.get("_count") != buckets[-1][1]:
            out.append(f"{where}: _count {g.get('_count')} != +Inf bucket {buckets[-1][1]}")
        if "_sum" not in g:
            out.append(f"{where}: no _sum")
    return out


def convention_problems(families: dict[str, Family], prefix: str = PREFIX) -> list[str]:
    """Our own families: the unit in the name, _total on counters only, no unbounded labels."""
    out = []
    for fam in families.values():
        if not fam.name.startswith(prefix):
            continue
        n = fam.name
        if fam.type == "counter" and not n.endswith("_total"):
            out.append(f"{n}: a counter's name ends in _total")
        if fam.type != "counter" and n.endswith("_total"):
            out.append(f"{n}: only counters end in _total")
        if any(w in n for w in TIME_WORDS) and not (n.endswith("_seconds") or n.endswith("_seconds_total")):
            out.append(f"{n}: a time is in seconds, with the unit last (_seconds)")
        if fam.type == "histogram" and not n.endswith("_seconds"):
            out.append(f"{n}: our histograms measure seconds and say so")
        for _, labels, _ in fam.samples:
            bad = UNBOUNDED_LABELS & set(labels)
            if bad:
                out.append(f"{n}: label(s) {sorted(bad)} grow without bound")
                break
    return out
