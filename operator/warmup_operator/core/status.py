"""The KernelWarmup's status, computed from what the operator observed (pure).

Warmups are read from Pods: the warmer's init container ends with its JSON summary as
the termination message (``/dev/termination-log``); with FallbackToLogsOnError a crash
leaves the log tail there instead. Only typed, bounded fields of a summary reach the
CR (``structured_summary``); no text from a Pod does.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from kernel_warmer.report import WarmupSummary
from warmup_operator.core import names



@dataclass(frozen=True)
class WarmupObservation:
    namespace: str
    pod: str
    cr: str
    hash: str
    workload: str
    finished_at: str
    exit_code: int
    summary: Optional[dict] = None  # the parsed summary, None when the message isn't one
    owner: Optional[tuple[str, str, str]] = None  # the Pod's controller: (kind, name, uid)
    node: str = ""  # spec.nodeName: where it ran

    @property
    def succeeded(self) -> bool:
        """Exit 0 and a summary status the warmer counts as done (``ok``, ``skipped``);
        a message that is no summary (a crash log tail) only has the exit code."""
        status = (self.summary or {}).get("status")
        return self.exit_code == 0 and (not isinstance(status, str) or status.lower() in ("ok", "skipped"))

    @property
    def seconds(self) -> Optional[float]:
        v = (self.summary or {}).get("seconds")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.pod, self.finished_at)


def parse_summary(message: str) -> Optional[dict]:
    """The warmer's summary as a dict, via the warmer's own model when it is there."""
    text = (message or "").strip()
    if not text.startswith("{"):
        return None
    try:
        return WarmupSummary.from_json(text).to_dict()
    except Exception:  # noqa: BLE001 - a message from a container: fall back to plain JSON below
        pass
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def workload_of_pod(pod: dict) -> str:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        name = ref.get("name", "")
        if ref.get("kind") == "ReplicaSet" and "-" in name:
            return name.rsplit("-", 1)[0]  # <deployment>-<pod-template-hash>
        return name
    return ""


def warmer_termination(pod: dict, statuses: str) -> Optional[dict]:
    """The warmer container's last termination in the Pod's ``statuses`` list
    (initContainerStatuses in a serving Pod, containerStatuses in a prewarm Job's): the one
    reader of the warmer's end, for the status and the prewarm gate alike."""
    for st in (pod.get("status") or {}).get(statuses) or []:
        if st.get("name") == names.WARMER_CONTAINER:
            return (st.get("state") or {}).get("terminated") or (st.get("lastState") or {}).get("terminated") or None
    return None


def observe_pod(pod: dict) -> Optional[WarmupObservation]:
    """The warmer's latest finished run in this Pod, if any."""
    meta = pod.get("metadata") or {}
    ann = meta.get("annotations") or {}
    if names.ANN_INJECTED_BY not in ann:
        return None
    term = warmer_termination(pod, "initContainerStatuses")
    if not term:
        return None
    return WarmupObservation(
        namespace=meta.get("namespace", ""), pod=meta.get("name", ""), cr=ann[names.ANN_INJECTED_BY],
        hash=ann.get(names.ANN_HASH, ""), workload=workload_of_pod(pod),
        finished_at=term.get("finishedAt") or "", exit_code=int(term.get("exitCode") or 0),
        summary=parse_summary(term.get("message") or ""), owner=controller_of(pod),
        node=str((pod.get("spec") or {}).get("nodeName") or ""),
    )


def controller_of(obj: dict) -> Optional[tuple[str, str, str]]:
    """(kind, name, uid) of the object's controlling owner reference."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return (str(ref.get("kind", "")), str(ref.get("name", "")), str(ref.get("uid", "")))
    return None


@dataclass(frozen=True)
class TargetState:
    kind: str
    name: str
    injected: bool
    hash: str = ""
    replicas: int = 0
    ready_replicas: int = 0
    message: str = ""
    # spec path -> {"value", "from"}: what the warmer plans for, read from the serving command
    engine: Optional[dict] = None
    reason: str = ""  # a CamelCase word for Events and the Degraded condition
    prewarm: Optional[dict] = None  # core/prewarm.status_entry: the prewarm Job(s) for this hash

    def to_status(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "injected": self.injected,
                               "replicas": self.replicas, "readyReplicas": self.ready_replicas}
        if self.hash:
            out["hash"] = self.hash
        if self.message:
            out["message"] = self.message[:MAX_MESSAGE]
        if self.engine:
            out["engine"] = [{"field": path, "value": str(v["value"]), "from": v["from"]}
                             for path, v in sorted(self.engine.items())]
        if self.reason:
            out["reason"] = self.reason
        if self.prewarm:
            out["prewarm"] = self.prewarm
        return out


MAX_MESSAGE = 1024


def replica_failure(workload_status: dict) -> tuple[str, str]:
    """(message, reason) when the workload's controller cannot create Pods (a Deployment's
    ReplicaFailure condition, e.g. FailedCreate after an admission refusal), else ("", "")."""
    for c in (workload_status or {}).get("conditions") or []:
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            why = str(c.get("reason") or "FailedCreate")
            return f"Pods cannot be created ({why}): {str(c.get('message') or '')[:512]}", "FailedCreate"
    return "", ""


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str = ""


@dataclass(frozen=True)
class StatusInputs:
    generation: int
    targets: list[TargetState] = field(default_factory=list)
    warmups: list[WarmupObservation] = field(default_factory=list)
    spec_error: str = ""


def display(w: WarmupObservation) -> str:
    outcome = "succeeded" if w.succeeded else f"failed (exit {w.exit_code})"
    secs = w.seconds
    return f"{outcome} in {secs:.1f}s" if secs is not None else outcome


# The FlashInfer phase's time split, from the summary's scalar fields (they survive the
# termination message's compaction): summary key -> status field.
FLASHINFER_TIMING = {"jit_seconds": "jitSeconds", "jit_modules_built": "jitModulesBuilt",
                     "tune_seconds": "tuneSeconds"}


def flashinfer_timing(summary: Optional[dict]) -> dict[str, Any]:
    """JIT seconds and modules built apart from tuning seconds (only the numbers present)."""
    fi = (summary or {}).get("flashinfer")
    if not isinstance(fi, dict):
        return {}
    return {field_: fi[key] for key, field_ in FLASHINFER_TIMING.items()
            if isinstance(fi.get(key), (int, float)) and not isinstance(fi.get(key), bool)}


def latest_warmup(warmups: list[WarmupObservation]) -> Optional[WarmupObservation]:
    return max(warmups, key=lambda w: (w.finished_at, w.pod), default=None)


def conditions(inp: StatusInputs) -> list[Condition]:
    last = latest_warmup(inp.warmups)
    if inp.spec_error:
        return [Condition("Ready", "False", "InvalidSpec", inp.spec_error),
                Condition("Degraded", "True", "InvalidSpec", inp.spec_error)]
    errors = [t for t in inp.targets if t.message and not t.injected and t.reason != "Prewarming"]
    failing = [t for t in inp.targets if t.injected and t.reason == "FailedCreate"]
    pending = [t for t in inp.targets if not t.injected and (not t.message or t.reason == "Prewarming")]
    if not inp.targets:
        ready = Condition("Ready", "False", "NoTargets", "no workload in this namespace matches spec.targets")
    elif errors or pending:
        names_ = ", ".join(f"{t.kind}/{t.name}" for t in (errors or pending))
        waiting = "Prewarming" if any(t.reason == "Prewarming" for t in pending) else "Injecting"
        ready = Condition("Ready", "False", "InjectionFailed" if errors else waiting, f"not injected yet: {names_}")
    else:
        ready = Condition("Ready", "True", "Injected", f"{len(inp.targets)} workload(s) injected")
    if errors:
        prewarm = {t.reason for t in errors} <= {"PrewarmFailed", "PrewarmTimedOut"}
        degraded = Condition("Degraded", "True", errors[0].reason if prewarm else "InjectionFailed",
                             "; ".join(f"{t.kind}/{t.name}: {t.message}" for t in errors)[:MAX_MESSAGE])
    elif failing:
        degraded = Condition("Degraded", "True", "FailedCreate",
                             "; ".join(f"{t.kind}/{t.name}: {t.message}" for t in failing)[:MAX_MESSAGE])
    elif last is not None and not last.succeeded:
        reason = structured_summary(last.summary or {}).get("failureReason", "NoSummary")
        degraded = Condition("Degraded", "True", "WarmupFailed",
                             f"pod {last.pod}: warmup failed ({reason}, exit code {last.exit_code}); the warmer's "
                             f"log says why: kubectl logs {last.pod} -c {names.WARMER_CONTAINER}")
    else:
        warn = [t for t in inp.targets if t.message and t.injected]
        degraded = (Condition("Degraded", "True", "Warning", "; ".join(t.message for t in warn)) if warn
                    else Condition("Degraded", "False", "AsExpected"))
    return [ready, degraded]


def compute_status(inp: StatusInputs, previous: Optional[dict], now: str) -> dict:
    """The full status object; condition transition times survive unchanged states."""
    prev_conds = {c.get("type"): c for c in ((previous or {}).get("conditions") or [])}
    conds = []
    for c in conditions(inp):
        p = prev_conds.get(c.type) or {}
        same = p.get("status") == c.status
        conds.append({"type": c.type, "status": c.status, "reason": c.reason, "message": c.message,
                      "lastTransitionTime": p.get("lastTransitionTime") if same and p.get("lastTransitionTime") else now,
                      "observedGeneration": inp.generation})
    injected = sum(1 for t in inp.targets if t.injected)
    out: dict[str, Any] = {
        "observedGeneration": inp.generation,
        "targetsInjected": f"{injected}/{len(inp.targets)}",
        "targets": carry_prewarm([t.to_status() for t in sorted(inp.targets, key=lambda t: (t.kind, t.name))],
                                 previous),
        "conditions": conds,
    }
    last = latest_warmup(inp.warmups)
    if last is not None:
        lw: dict[str, Any] = {"pod": last.pod, "workload": last.workload, "hash": last.hash,
                              "succeeded": last.succeeded, "exitCode": last.exit_code,
                              "finishedAt": last.finished_at, "display": display(last)}
        if last.seconds is not None:
            lw["seconds"] = last.seconds
        if flashinfer_timing(last.summary):
            lw["flashinfer"] = flashinfer_timing(last.summary)
        if last.summary is not None:
            lw["summary"] = structured_summary(last.summary)
        out["lastWarmup"] = lw
    return out


# --- the warmer's summary as the CR may carry it: typed, bounded, no free text -----------

SUMMARY_STATUSES = ("ok", "failed", "skipped")
FLASHINFER_STATES = ("ok", "warm", "skipped", "failed")
# Words of the warmer's error (report.py, runner.py, deadline, cli) -> a fixed reason.
FAILURE_REASONS = (
    ("timeoutSeconds", "Timeout"), ("is full (ENOSPC", "CacheVolumeFull"), ("read-only", "CacheVolumeReadOnly"),
    ("permission denied", "CacheVolumePermission"), ("cache lock", "CacheLockTimeout"),
    ("config field", "ModelConfigInvalid"), ("no GPU visible", "NoGPU"),
    ("autotune broadcast failed", "DistributedFailed"), ("triton variant(s) failed", "CompileFailed"),
)
MAX_COUNT = 10**6
_HEX = re.compile(r"^[0-9a-f]{1,64}$")
_VERSION = re.compile(r"^[0-9]{1,4}\.[0-9]{1,4}(\.[0-9]{1,6})?([.+-][A-Za-z0-9.]{1,20})?$")


def _count(v: Any) -> int:
    return min(max(v, 0), MAX_COUNT) if isinstance(v, int) and not isinstance(v, bool) else 0


def failure_reason(error: Any) -> str:
    text = error if isinstance(error, str) else ""
    return next((reason for needle, reason in FAILURE_REASONS if needle in text), "WarmupFailed")


def structured_summary(summary: dict) -> dict:
    """What of a Pod's summary reaches the KernelWarmup: enums, bounded numbers and a hex
    key. Free text (an error, a log tail) never does: a Pod's message could carry
    anything its container could read (env, tokens); the log is where the words are."""
    status = summary.get("status") if summary.get("status") in SUMMARY_STATUSES else "failed"
    out: dict[str, Any] = {"status": status}
    secs = summary.get("seconds")
    if isinstance(secs, (int, float)) and not isinstance(secs, bool) and math.isfinite(secs):
        out["seconds"] = round(min(max(float(secs), 0.0), 1e7), 3)
    key = summary.get("cacheKey")
    if isinstance(key, str) and _HEX.match(key):
        out["cacheKey"] = key
    t = summary.get("triton") if isinstance(summary.get("triton"), dict) else {}
    out["triton"] = {k: _count(t.get(k)) for k in ("compiled", "hit", "skipped", "failed")}
    fi = summary.get("flashinfer") if isinstance(summary.get("flashinfer"), dict) else {}
    fi_status = str(fi.get("status") or "")
    state = next((w for w in FLASHINFER_STATES if fi_status.startswith(w)), None)
    if state:
        out["flashinfer"] = state
    if status == "failed":
        out["failureReason"] = failure_reason(summary.get("error"))
    vllm = (summary.get("versions") or {}).get("vllm") if isinstance(summary.get("versions"), dict) else None
    if isinstance(vllm, str) and _VERSION.match(vllm):
        out["vllmVersion"] = vllm
    if isinstance(summary.get("warnings"), list) and summary["warnings"]:
        out["warnings"] = _count(len(summary["warnings"]))
    return out


def status_patch(previous: Optional[dict], new: dict) -> dict:
    """A merge patch that makes the status exactly ``new``: keys of ``previous`` that
    ``new`` lacks are set to null (a merge patch otherwise keeps them: an old summary's
    fields would outlive the warmup they described)."""
    out = dict(new)
    for k, old in (previous or {}).items():
        if k not in new:
            out[k] = None
        elif isinstance(old, dict) and isinstance(new[k], dict):
            out[k] = status_patch(old, new[k])
    return out


def removal_stuck(previous: Optional[dict], message: str, now: str) -> dict:
    """The status patch of a KernelWarmup whose deletion waits on a removal that fails."""
    keep = [c for c in (previous or {}).get("conditions") or [] if c.get("type") not in ("Ready", "Degraded")]
    return {"conditions": keep + [
        {"type": "Ready", "status": "False", "reason": "Deleting", "message": "removing the injection",
         "lastTransitionTime": now},
        {"type": "Degraded", "status": "True", "reason": "RemovalFailed",
         "message": f"deletion waits for: {message}"[:MAX_MESSAGE], "lastTransitionTime": now}]}


def carry_prewarm(targets: list[dict], previous: Optional[dict]) -> list[dict]:
    """A target's prewarm entry outlives an operator restart (the Jobs may be gone by then):
    kept from the previous status while the target's hash is the one it was prewarmed for."""
    before = {(t.get("kind"), t.get("name")): t.get("prewarm") for t in (previous or {}).get("targets") or []}
    out = []
    for t in targets:
        old = before.get((t["kind"], t["name"]))
        if "prewarm" not in t and old and t.get("hash") and old.get("hash") == t.get("hash") and t.get("injected"):
            t = {**t, "prewarm": old}
        out.append(t)
    return out


def same_status(a: Optional[dict], b: Optional[dict]) -> bool:
    """Equal ignoring condition timestamps (no write when nothing changed)."""
    def strip(s: Optional[dict]) -> Any:
        s = dict(s or {})
        s["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in s.get("conditions") or []]
        return json.dumps(s, sort_keys=True)
    return strip(a) == strip(b)
