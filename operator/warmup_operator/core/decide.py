"""What to do with one workload, given the KernelWarmups in its namespace (pure).

Every path that changes a workload goes through ``decide``: the CR handlers, the
workload watch and the periodic resync all reach the same answer for the same inputs,
and an answer of "none" (same hash already in place) is what keeps rollouts from looping.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping, Optional, Union

from warmup_operator.core import inject, names, trust, uninject
from warmup_operator.core.dicts import deep_merge, nest
from warmup_operator.core.kernelwarmup import KernelWarmupSpec, SpecInvalid, parse_spec
from warmup_operator.core.kinds import WorkloadKind
from warmup_operator.core.targets import selects, templates


@dataclass(frozen=True)
class CRRecord:
    """A KernelWarmup as the operator sees it (from the watch/index)."""

    name: str
    namespace: str
    uid: str = ""
    created: str = ""
    generation: int = 0
    spec: dict = field(default_factory=dict)
    deleting: bool = False
    observed_generation: int = 0  # status.observedGeneration: the generation its status was last written for

    @classmethod
    def from_body(cls, body: Any) -> "CRRecord":
        meta = body.get("metadata") or {}
        return cls(
            name=meta.get("name", ""), namespace=meta.get("namespace", ""), uid=meta.get("uid", ""),
            created=meta.get("creationTimestamp") or "", generation=int(meta.get("generation") or 0),
            spec=dict(body.get("spec") or {}), deleting=bool(meta.get("deletionTimestamp")),
            observed_generation=int((body.get("status") or {}).get("observedGeneration") or 0),
        )

    def parsed(self) -> Union[KernelWarmupSpec, SpecInvalid]:
        return _parse_cached(json.dumps(self.spec, sort_keys=True), self.namespace)


def cr_ref(cr: CRRecord) -> dict:
    """The KernelWarmup as an Event's involved object."""
    return {"apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.KIND,
            "metadata": {"name": cr.name, "namespace": cr.namespace, "uid": cr.uid}}


@functools.lru_cache(maxsize=1024)
def _parse_cached(spec_json: str, namespace: str) -> Union[KernelWarmupSpec, SpecInvalid]:
    """Specs are parsed once per content: every workload event consults every CR."""
    try:
        return parse_spec(json.loads(spec_json), namespace)
    except SpecInvalid as exc:
        return exc


@dataclass(frozen=True)
class Decision:
    action: Literal["inject", "remove", "none"]
    kind: str
    name: str
    namespace: str
    owner: Optional[str] = None  # the KernelWarmup that selects the workload
    hash: Optional[str] = None  # desired hash (None when not selected)
    body: Optional[dict] = None  # the server-side-apply body
    error: Optional[inject.InjectionError] = None
    conflicts: tuple[str, ...] = ()  # other KernelWarmups that select it too (ignored)
    warnings: tuple[str, ...] = ()
    engine: Optional[dict] = None  # what the warmer plans for and from where (first template)
    record: bool = False  # "none", but write ``body`` once: an earlier version's injection adopted as it is


def workload_meta(obj: Any) -> tuple[str, str, dict]:
    meta = obj.get("metadata") or {}
    return meta.get("name", ""), meta.get("namespace", ""), dict(meta.get("labels") or {})


def apply_body(kind: WorkloadKind, name: str, namespace: str, template_fragments: dict,
               inputs: Optional[str] = None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if inputs:
        meta["labels"] = {names.LABEL_INPUTS: inputs}
    return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": meta, **template_fragments}


def inputs_digest(owner: CRRecord, tmpls: list) -> str:
    """What an injection is built from: the CR (its uid and generation, which moves with every
    spec change and not with defaults a newer CRD fills in) and the user's own templates."""
    return inject.digest({"cr": [owner.uid, owner.name, owner.generation],
                          "templates": [uninject.user_view(t) for _, t in tmpls]})


def kept_injection(kind: WorkloadKind, obj: Any, tmpls: list, owner: str, inputs: str,
                   cache: Mapping[str, Any]) -> Optional[tuple[dict, bool]]:
    """An injection an earlier operator version made from the same inputs is kept as it is
    (an operator upgrade rolls nothing out; the new injection comes with the workload's or
    the CR's next change): (the body that owns it, whether that body must be written once).
    None: the live injection is not ours, not whole, from other inputs, or mounts another
    cache than ``cache`` (the volume source this version mounts: a tenant's own folder is
    never left on a folder every namespace shares)."""
    if not tmpls or not all(uninject.live_owner(t) == owner and uninject.live_hash(t)
                            and uninject.injected_parts_present(t) and _same_cache(t, cache) for _, t in tmpls):
        return None
    recorded = _recorded(obj)
    if recorded not in (None, inputs):
        return None
    parts: dict = {}
    for path, t in tmpls:
        parts = deep_merge(parts, nest(path, uninject.injected_parts(t)))
    name, namespace, _ = workload_meta(obj)
    # No record: injected by a version that kept none, taken as made from what is there now.
    return apply_body(kind, name, namespace, parts, inputs), recorded is None


def decide(kind: WorkloadKind, obj: Any, crs: list[CRRecord], *,
           default_bootstrap_image: str = names.DEFAULT_BOOTSTRAP_IMAGE,
           policy: trust.TrustPolicy = trust.TrustPolicy(),
           namespace_labels: Optional[Mapping[str, str]] = None,
           cluster_crs: Optional[list[CRRecord]] = None) -> Decision:
    """Inject, re-inject, remove or nothing, for one workload. ``cluster_crs``: every
    KernelWarmup of the cluster, for the one-mount-path-per-cache check (default: ``crs``)."""
    name, namespace, labels = workload_meta(obj)
    tmpls = templates(kind, obj)
    base = dict(kind=kind.kind, name=name, namespace=namespace)
    live_owners = {uninject.live_owner(t) for _, t in tmpls} - {None}
    parsed = [(cr, cr.parsed()) for cr in crs if cr.namespace == namespace and not cr.deleting]
    selecting = sorted(
        ((cr, s) for cr, s in parsed if isinstance(s, KernelWarmupSpec) and selects(s.targets, kind.kind, name, labels)),
        key=lambda cs: (cs[0].created, cs[0].name),
    )
    meta = obj.get("metadata") or {}
    allowed = [(cr, s) for cr, s in selecting if trust.opted_in(meta, cr.name)]
    if selecting and not allowed:  # selected, but the workload's owner did not opt in
        first = selecting[0][0].name
        refused = trust.not_opted_in(kind.kind, name, first, meta)
        if not live_owners:
            return Decision("none", **base, owner=first, error=refused)
        return replace(_removal(kind, obj, tmpls, base), owner=first, error=refused)
    if allowed:
        checked = _Checked(kind, obj, tmpls, base, allowed, default_bootstrap_image)
        return checked.decide(policy, namespace_labels, _parsed_specs(crs if cluster_crs is None else cluster_crs))
    if not live_owners:
        return Decision("none", **base)
    # Injected by a KernelWarmup whose spec is now unreadable: keep it until it is fixed
    # or deleted, rather than dropping a working warmup over a typo.
    for cr, s in parsed:
        if cr.name in live_owners and isinstance(s, SpecInvalid):
            return Decision("none", **base, owner=cr.name)
    return _removal(kind, obj, tmpls, base)


@dataclass(frozen=True)
class _Checked:
    """A workload its oldest opted-in KernelWarmup selects: trust checks, the injection of
    each template, then up to date, kept (an earlier version's), or inject."""

    kind: WorkloadKind
    obj: Any
    tmpls: list
    base: dict
    allowed: list
    bootstrap_image: str

    def spec_of(self, owner: CRRecord) -> KernelWarmupSpec:
        return next(s for cr, s in self.allowed if cr is owner)

    def decide(self, policy: trust.TrustPolicy, namespace_labels: Optional[Mapping[str, str]],
               peers: list[tuple[CRRecord, KernelWarmupSpec]]) -> Decision:
        owner, spec = self.allowed[0]
        conflicts = tuple(cr.name for cr, _ in self.allowed[1:])
        try:
            trust.check_spec(spec, policy, self.base["namespace"], namespace_labels)
            trust.check_cache_mount(owner, spec, peers)
            merged, desired, found = self._injections(owner, spec)
        except inject.InjectionError as exc:  # TrustError included
            return Decision("none", **self.base, owner=owner.name, error=exc, conflicts=conflicts)
        found["conflicts"] = conflicts
        return self._verdict(owner, merged, desired, found)

    def _injections(self, owner: CRRecord, spec: KernelWarmupSpec) -> tuple[dict, list[str], dict]:
        """(the fragments merged, each template's hash, the Decision's findings)."""
        merged: dict = {}
        desired: list[str] = []
        warnings: list[str] = []
        engine: Optional[dict] = None
        for path, t in self.tmpls:
            uninject.check_reserved_names(t)
            inj = inject.build_injection(spec, uninject.user_view(t), cr_name=owner.name,
                                         default_bootstrap_image=self.bootstrap_image)
            desired.append(inj.hash)
            warnings.extend(w for w in inj.warnings if w not in warnings)
            engine = inj.engine if engine is None else engine
            merged = deep_merge(merged, nest(path, inj.fragment))
        return merged, desired, dict(owner=owner.name, warnings=tuple(warnings), engine=engine)

    def _verdict(self, owner: CRRecord, merged: dict, desired: list[str], found: dict) -> Decision:
        name, namespace = self.base["name"], self.base["namespace"]
        h = inject.digest(desired) if len(desired) > 1 else (desired[0] if desired else None)
        inputs = inputs_digest(owner, self.tmpls)
        # Same hash and owner, and the injected entries still there (someone may have
        # removed the init containers but left the annotation: drift, re-applied).
        up_to_date = all(uninject.live_hash(t) == d and uninject.live_owner(t) == owner.name
                         and uninject.injected_parts_present(t) for (_, t), d in zip(self.tmpls, desired))
        if up_to_date:  # the body too: the admission webhook repairs values a write reset (core/admission.py)
            return Decision("none", **self.base, **found, hash=h,
                            body=apply_body(self.kind, name, namespace, merged, inputs),
                            record=_recorded(self.obj) != inputs)
        kept = kept_injection(self.kind, self.obj, self.tmpls, owner.name, inputs, self.spec_of(owner).cache.volume())
        if kept is not None:
            live = [uninject.live_hash(t) for _, t in self.tmpls]
            return Decision("none", **self.base, **found, hash=inject.digest(live) if len(live) > 1 else live[0],
                            body=kept[0], record=kept[1])
        return Decision("inject", **self.base, **found, hash=h,
                        body=apply_body(self.kind, name, namespace, merged, inputs))


def _same_cache(template: dict, cache: Mapping[str, Any]) -> bool:
    """Whether the template's cache volume is ``cache`` (its kind and where it points; the
    API server's defaults aside)."""
    vols = ((template or {}).get("spec") or {}).get("volumes") or []
    live = next((v for v in vols if v.get("name") == names.CACHE_VOLUME), {})
    for key, fields in (("hostPath", ("path",)), ("persistentVolumeClaim", ("claimName",)),
                        ("emptyDir", ("medium", "sizeLimit"))):
        if key in cache:
            return key in live and all((live[key] or {}).get(f) == (cache[key] or {}).get(f) for f in fields)
    return False


def _recorded(obj: Any) -> Optional[str]:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(names.LABEL_INPUTS)


def _parsed_specs(crs: list[CRRecord]) -> list[tuple[CRRecord, KernelWarmupSpec]]:
    return [(c, s) for c in crs if isinstance(s := c.parsed(), KernelWarmupSpec)]


def _removal(kind: WorkloadKind, obj: Any, tmpls: list, base: dict) -> Decision:
    merged: dict = {}
    for path, t in tmpls:
        frag = uninject.removal_fragment(t)
        if frag:
            merged = deep_merge(merged, nest(path, frag))
    return Decision("remove", **base, body=apply_body(kind, base["name"], base["namespace"], merged))
