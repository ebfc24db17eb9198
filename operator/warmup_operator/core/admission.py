"""What the mutating admission webhook does to a workload being written (pure).

The webhook and the controller reach the same answer through the same code: ``decide``
says inject / remove / nothing for the object as the user wrote it, and the templates the
webhook returns are what server-side apply makes of the controller's fragment:

- inject: the user's view of the template (``uninject.user_view``) with the fragment merged
  in as server-side apply merges keyed lists (initContainers, volumes and containers by
  name, env by name, volumeMounts by mountPath; in the order the API server's merge gives);
- remove: the user's view of the template (the user's own PYTHONPATH value included);
- nothing (injected with the current hash): the fragment merged over the template as it
  is, which puts back an injected value the write reset (``kubectl apply`` of the user's
  own manifest resets a prefixed PYTHONPATH to the user's value).

Nothing here ever refuses a write: an answer the webhook cannot give leaves the object as
written, and the controller repairs it afterwards (``missed_admission`` says why that
happened, for the status and an Event)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from warmup_operator.core import names, trust, uninject
from warmup_operator.core.decide import CRRecord, Decision
from warmup_operator.core.dicts import get_path
from warmup_operator.core.kinds import WorkloadKind
from warmup_operator.core.targets import templates

# The keyed lists of a pod template, and the key each is merged by (as the API's schema
# declares them: x-kubernetes-list-map-keys / patchMergeKey).
LIST_KEYS = {"initContainers": "name", "volumes": "name", "containers": "name", "env": "name",
             "volumeMounts": "mountPath"}

# Issue 17's seam: a gate sees the decision before the webhook injects and may hold the
# new injection back (returns why, e.g. "prewarm of hash X pending"); the template is then
# left as the user wrote it and the controller takes over once the gate opens.
Gate = Callable[[Decision], Optional[str]]


@dataclass(frozen=True)
class Admission:
    decision: Decision
    # template path -> the template to write there (empty: leave the object as written)
    templates: dict[tuple[str, ...], dict] = field(default_factory=dict)
    note: str = ""  # for the log and the write's warnings: why nothing changed, or what did
    inputs: str = ""  # what the injection is made from, for the workload's LABEL_INPUTS (empty: leave it)


def recorded_inputs(d: Decision) -> str:
    """The digest the decision's body writes on the workload's metadata (core/decide.py)."""
    return str(get_path(d.body or {}, ("metadata", "labels", names.LABEL_INPUTS)) or "")


def merge_keyed(live: Any, fragment: Any, list_key: Optional[str] = None) -> Any:
    """``fragment`` merged into ``live`` as server-side apply merges (a new object)."""
    if isinstance(fragment, Mapping) and isinstance(live, Mapping):
        out = copy.deepcopy(dict(live))
        for k, v in fragment.items():
            out[k] = merge_keyed(live.get(k), v, k)
        return out
    key = LIST_KEYS.get(list_key or "")
    if key and isinstance(fragment, list) and isinstance(live, list):
        return _merge_list(live, fragment, key)
    return copy.deepcopy(fragment)


def _merge_list(live: list, applied: list, key: str) -> list:
    """Two keyed lists merged in the order server-side apply gives them: the live order,
    except that entries both lists hold come in the applied list's order, and an applied
    entry the live list lacks comes right before the next shared one (or at the end).
    (structured-merge-diff's associative-list merge, which the API server runs.)"""
    live_by = {item.get(key): item for item in live}
    applied_by = {item.get(key): item for item in applied}
    shared = [k for k in applied_by if k in live_by]  # in the applied order
    nxt = 0  # shared[nxt]: the shared entry due next
    out: list = []
    done: set = set()
    li = ri = 0
    while li < len(live) or ri < len(applied):
        lk = live[li].get(key) if li < len(live) else None
        due = shared[nxt] if nxt < len(shared) else None
        if li < len(live) and ri < len(applied):
            if lk == applied[ri].get(key):
                out.append(merge_keyed(live[li], applied[ri]))
                done.add(lk)
                li, ri, nxt = li + 1, ri + 1, nxt + 1
                continue
            if lk in applied_by and due is not None and due != lk:  # shared, but not its turn yet
                li += 1
                continue
        if li < len(live):
            if lk not in applied_by:
                out.append(copy.deepcopy(live[li]))
                li += 1
                continue
            if lk in done:
                li += 1
        if ri < len(applied):
            rk = applied[ri].get(key)
            out.append(merge_keyed(live_by[rk], applied[ri]) if rk in live_by else copy.deepcopy(applied[ri]))
            done.add(rk)
            ri += 1
            if due is not None and due == rk:
                nxt += 1
    return out


def injected_template(live_template: dict, fragment: dict) -> dict:
    """The template once ``fragment`` (the controller's apply) replaces what was injected."""
    return merge_keyed(uninject.user_view(live_template), fragment)


def admit(kind: WorkloadKind, obj: Mapping[str, Any], d: Decision, gate: Optional[Gate] = None) -> Admission:
    """The templates to write for ``obj`` as admitted, given the controller's decision for
    it (``decide``, or the controller's ``decision`` with its LeaderWorkerSet check)."""
    tmpls = templates(kind, obj)
    if d.action == "none" and d.body is not None:  # injected with this hash: put back what the write reset
        fixed = {p: merge_keyed(t, get_path(d.body, p) or {}) for p, t in tmpls}
        fixed = {p: t for p, t in fixed.items() if t != get_path(obj, p)}
        return Admission(d, fixed, note="injected values the write had reset put back" if fixed else "",
                         inputs=recorded_inputs(d) if d.record else "")
    if d.action == "none":
        return Admission(d, note=refusal_note(d) if d.error and _opted_in(obj) else "")
    if d.action == "remove":
        return Admission(d, {p: uninject.user_view(t) for p, t in tmpls}, note="injection removed")
    held = gate(d) if gate is not None else None
    if held:
        return Admission(d, note=f"injection held back: {held}")
    new = {p: injected_template(t, get_path(d.body or {}, p) or {}) for p, t in tmpls}
    return Admission(d, new, note=f"injected from KernelWarmup {d.owner} (hash {d.hash})", inputs=recorded_inputs(d))


def refusal_note(d: Decision) -> str:
    """Why the write was not injected, for the workload's owner. A KernelWarmup the workload
    did not opt into is named but never recommended: whoever may create a KernelWarmup
    could otherwise make the webhook ask the owner to opt into theirs."""
    if getattr(d.error, "reason", "") == "NotOptedIn":
        return (f"not injected: KernelWarmup {d.owner!r} selects this workload, which did not opt into it; "
                "ignored (the opt-in label or annotation decides)")
    return f"not injected: {d.error}"


def _opted_in(obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    return trust.OPT_IN in (meta.get("labels") or {}) or trust.OPT_IN in (meta.get("annotations") or {})


def missed_admission(cr: CRRecord, obj: Mapping[str, Any]) -> Optional[str]:
    """Why the controller has to inject a workload the webhook should have injected at its
    last write (None: the KernelWarmup itself changed since its status was written, which
    is the controller's job)."""
    if cr.generation != cr.observed_generation:
        return None
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if trust.OPT_IN not in labels:
        return (f"opted in by annotation only: the admission webhook selects workloads by the label {trust.OPT_IN}, "
                "so this write was injected afterwards by the controller (a second rollout); set the label instead")
    return ("written without injection (the admission webhook did not answer: operator down or unreachable, and "
            "failurePolicy Ignore let the write through); injected afterwards by the controller (a second rollout)")
