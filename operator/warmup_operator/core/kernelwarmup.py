"""A KernelWarmup's spec as typed values.

The warmer-facing part is rendered into ``kernel_warmer.spec.WarmerSpec`` (the contract
the warmer owns), so no field of it is declared twice; this module only types the
operator's own sections (targets, cache volume, warmer container). The API server has
already applied the CRD's schema and defaults; parsing here still checks everything it
relies on, so a CR written before a schema change gets a clear error, not a crash.
"""

from __future__ import annotations

import copy
import dataclasses
import posixpath
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from kernel_warmer.errors import FieldError
from kernel_warmer.spec import DEFAULT_CACHE_DIR, EngineWarmup, SpecError, WarmerSpec, camel
from warmup_operator.core import names, quantity
from warmup_operator.core.containers import norm_path
from warmup_operator.core.kinds import KINDS as WORKLOAD_KINDS

KINDS = tuple(WORKLOAD_KINDS)  # kind names, in the one list's order
# Spec keys that belong to the warmer's contract: everything but cacheDir (the operator
# derives it from cache.mountPath) and server (the serving container's own command, args
# and PYTHONPATH, which the operator copies: a KernelWarmup author never chooses what the
# engine phase runs; spec.engineWarmup only says whether it runs).
OPERATOR_DERIVED = ("cache_dir", "server")
WARMER_KEYS = tuple(camel(f.name) for f in dataclasses.fields(WarmerSpec) if f.name not in OPERATOR_DERIVED)
OPERATOR_KEYS = ("targets", "servingContainer", "cache", "warmer", "sitecustomize", "prewarm", "engineWarmup")
ENGINE_WARMUP = typing.get_args(EngineWarmup)


class SpecInvalid(FieldError):
    """The CR's spec is wrong; ``field`` is the dotted path from the object root."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Targets:
    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[Requirement, ...] = ()
    has_selector: bool = False
    names: tuple[str, ...] = ()
    kinds: tuple[str, ...] = KINDS


# The hostPath folder's sub-folder that holds one folder per namespace: never a name of the
# cache's own layout (CacheLayout), so no namespace's folder is a cache every tenant wrote
# before the folder was split (a namespace called "triton" or "vllm").
DOMAINS_DIR = "namespaces"


@dataclass(frozen=True)
class CacheVolume:
    mount_path: str
    # The pod volume source as the CR writes it, exactly one key: emptyDir, hostPath or
    # persistentVolumeClaim (the installer's allow-list is checked against this).
    source: Mapping[str, Any]
    # The trust domain whose folder of a hostPath cache the Pods mount: the KernelWarmup's
    # namespace (a PVC is a namespace's already; an emptyDir is the Pod's own).
    domain: str = ""

    def volume(self) -> dict[str, Any]:
        """The Pod's volume source: a hostPath cache is the domain's own sub-folder, so no
        tenant's server loads code another namespace's Pods wrote."""
        hp = self.source.get("hostPath")
        if hp is None or not self.domain:
            return copy.deepcopy(dict(self.source))
        return {"hostPath": {**copy.deepcopy(dict(hp)), "path": f"{hp['path']}/{DOMAINS_DIR}/{self.domain}",
                             "type": "DirectoryOrCreate"}}


@dataclass(frozen=True)
class WarmerContainer:
    image: Optional[str] = None  # only when the operator's allow-list has it (core/trust.py)
    image_pull_policy: Optional[str] = None
    python: Optional[str] = None  # only one the operator's allow-list has (core/trust.py); None: the serving image's
    resources: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrewarmSpec:
    """spec.prewarm: fill a shared cache with a Job before the rollout (core/prewarm.py)."""

    enabled: bool = True
    timeout_seconds: Optional[int] = None  # None: the warmer's timeoutSeconds + PREWARM_TIMEOUT_SLACK_S
    nodes: Optional[str] = None  # hostPath only: "WorkloadPods" or "Selector" (None: no prewarm)
    node_labels: Mapping[str, str] = field(default_factory=dict)
    node_expressions: tuple[Requirement, ...] = ()


NODE_SOURCES = ("WorkloadPods", "Selector")


@dataclass(frozen=True)
class KernelWarmupSpec:
    targets: Targets
    cache: CacheVolume
    container: WarmerContainer
    warmer: WarmerSpec
    serving_container: Optional[str] = None
    sitecustomize: bool = True
    # the warmer fields exactly as the CR writes them (camelCase, cacheDir added): what the
    # serving command may fill in (core/serving.py) where the CR leaves a field unset
    warmer_fields: Mapping[str, Any] = field(default_factory=dict)
    prewarm: PrewarmSpec = PrewarmSpec()
    # spec.engineWarmup: whether the warmer starts the serving command itself (kernel_warmer/server/)
    engine_warmup: str = "auto"


def _obj(data: Any, where: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecInvalid(where, f"must be an object, got {type(data).__name__}")
    return data


def _str(data: Mapping, key: str, where: str, default: Optional[str] = None) -> Optional[str]:
    value = data.get(key, default)
    if value is not None and not isinstance(value, str):
        raise SpecInvalid(f"{where}.{key}", f"must be a string, got {value!r}")
    return value


def parse_selector(data: Any, where: str) -> tuple[dict[str, str], tuple[Requirement, ...]]:
    """A label selector (matchLabels, matchExpressions); an empty one is refused."""
    sel = _obj(data, where)
    labels = _obj(sel.get("matchLabels"), f"{where}.matchLabels")
    exprs: list[Requirement] = []
    for i, e in enumerate(sel.get("matchExpressions") or []):
        e = _obj(e, f"{where}.matchExpressions[{i}]")
        op = e.get("operator")
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise SpecInvalid(f"{where}.matchExpressions[{i}].operator",
                              f"must be In, NotIn, Exists or DoesNotExist, got {op!r}")
        exprs.append(Requirement(str(e.get("key", "")), op, tuple(e.get("values") or ())))
    if not labels and not exprs:
        raise SpecInvalid(where, "must set matchLabels or matchExpressions")
    return dict(labels), tuple(exprs)


def parse_targets(data: Any) -> Targets:
    where = "spec.targets"
    t = _obj(data, where)
    sel = t.get("selector")
    labels: dict[str, str] = {}
    exprs: tuple[Requirement, ...] = ()
    if sel is not None:
        labels, exprs = parse_selector(sel, f"{where}.selector")
    names_ = tuple(t.get("names") or ())
    if sel is None and not names_:
        raise SpecInvalid(where, "set spec.targets.selector or spec.targets.names")
    kinds = tuple(t.get("kinds") or KINDS)
    for k in kinds:
        if k not in KINDS:
            raise SpecInvalid(f"{where}.kinds", f"{k!r} is not one of {', '.join(KINDS)}")
    return Targets(dict(labels), tuple(exprs), sel is not None, names_, kinds)


# Folders of the serving image a cache volume mounted on (or over, or inside) would hide:
# the system's, where Python and vLLM live, and where a server finds models baked in.
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
               "/sys", "/usr", "/var/lib", "/var/run", "/opt/venv", "/opt/conda", "/root/.cache/huggingface")
# Path parts that mean "a Python environment's packages": no cache inside one.
PACKAGE_PARTS = ("site-packages", "dist-packages")


def shadowed_system_dir(mount: str) -> Optional[str]:
    """The image folder a cache at ``mount`` would hide, if any (None: a folder of its own)."""
    path = posixpath.normpath(mount)
    for d in SYSTEM_DIRS:
        if path == d or path.startswith(d + "/") or d.startswith(path + "/"):
            return d
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part in PACKAGE_PARTS or part.endswith(".venv"):
            return "/".join(parts[:i + 1]) + " (Python packages)"
    return None


def parse_cache(data: Any, domain: str = "") -> CacheVolume:
    where = "spec.cache"
    c = _obj(data, where)
    written = _str(c, "mountPath", where, DEFAULT_CACHE_DIR) or ""
    if not written.startswith("/") or ":" in written:
        raise SpecInvalid(f"{where}.mountPath", f"must be an absolute path other than /, got {written!r}")
    # As the container runtime resolves it ("//usr" and "/./usr" are /usr): every check below
    # and everything mounted use this form.
    mount = norm_path(written)
    if mount == "/":
        raise SpecInvalid(f"{where}.mountPath", f"must be an absolute path other than /, got {written!r}")
    if mount == names.PKG_MOUNT or mount.startswith(names.PKG_MOUNT + "/"):
        raise SpecInvalid(f"{where}.mountPath", f"must not be under {names.PKG_MOUNT} (the operator's package folder)")
    if (shadowed := shadowed_system_dir(mount)) is not None:
        raise SpecInvalid(f"{where}.mountPath", f"{mount!r:.200} would hide the image's {shadowed} from the server; "
                          "choose a folder of its own, such as /kernel-warmup-cache")
    kinds = [k for k in ("emptyDir", "hostPath", "persistentVolumeClaim") if k in c]
    if len(kinds) > 1:
        raise SpecInvalid(where, f"set at most one of emptyDir, hostPath, persistentVolumeClaim (got {', '.join(kinds)})")
    kind = kinds[0] if kinds else "emptyDir"
    source = _obj(c.get(kind), f"{where}.{kind}")
    if kind == "hostPath" and not str(source.get("path", "")).startswith("/"):
        raise SpecInvalid(f"{where}.hostPath.path", "must be an absolute path")
    if kind == "persistentVolumeClaim" and not source.get("claimName"):
        raise SpecInvalid(f"{where}.persistentVolumeClaim.claimName", "is required")
    check_memory_medium({kind: source}, where)
    return CacheVolume(mount, {kind: dict(source)}, domain)


# The CRD's patterns, checked again here: a CR stored before a schema change (or applied
# with validation off) must not put a shell metacharacter or a space into a container.
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,511}$")
PYTHON_RE = re.compile(r"^[A-Za-z0-9_./-]{1,256}$")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def _matching(w: Mapping, key: str, where: str, pattern: re.Pattern, what: str, default: Optional[str] = None) -> Optional[str]:
    value = _str(w, key, where, default)
    if value and not pattern.match(value):
        raise SpecInvalid(f"{where}.{key}", f"{value!r:.120} is not {what} (letters, digits and . _ / : @ - only)")
    return value


# What spec.warmer.resources may set, and at most (the warmer's GPUs and devices are always
# the serving container's; an author cannot make the warmer ask a node for more than these).
WARMER_RESOURCES = {"cpu": (256.0, "256"), "memory": (2048 * quantity.GI, "2Ti"),
                    "ephemeral-storage": (2048 * quantity.GI, "2Ti")}
# A Memory-medium cache (tmpfs) counts against the node's memory: it needs a sizeLimit, at most this.
MEMORY_CACHE_MAX = (64 * quantity.GI, "64Gi")


def parse_resources(data: Any, where: str) -> dict:
    res = _obj(data, where)
    for key in res:
        if key not in ("limits", "requests"):
            raise SpecInvalid(f"{where}.{key}", "only limits and requests may be set")
    for section in ("limits", "requests"):
        for name, value in _obj(res.get(section), f"{where}.{section}").items():
            if name not in WARMER_RESOURCES:
                raise SpecInvalid(f"{where}.{section}[{name}]", f"only {', '.join(WARMER_RESOURCES)} may be set (GPUs and "
                                  "other devices always follow the serving container)")
            amount, (bound, shown) = quantity.parse(value), WARMER_RESOURCES[name]
            if amount is None or amount > bound:
                raise SpecInvalid(f"{where}.{section}[{name}]", f"{value!r:.40} is not a quantity up to {shown}")
    return res


def check_memory_medium(source: Mapping[str, Any], where: str) -> None:
    ed = source.get("emptyDir")
    if not isinstance(ed, Mapping) or ed.get("medium") != "Memory":
        return
    size = quantity.parse(ed.get("sizeLimit")) if ed.get("sizeLimit") is not None else None
    if size is None or size > MEMORY_CACHE_MAX[0]:
        raise SpecInvalid(f"{where}.emptyDir.sizeLimit", f"a Memory cache needs a sizeLimit up to {MEMORY_CACHE_MAX[1]} "
                          f"(it is the node's memory), got {ed.get('sizeLimit')!r:.40}")


def parse_container(data: Any) -> WarmerContainer:
    """spec.warmer. A ``bootstrapImage`` (a field of older CRDs) is ignored: the bootstrap
    image is the operator's own configuration, never a namespace user's choice."""
    where = "spec.warmer"
    w = _obj(data, where)
    resources = parse_resources(w.get("resources"), f"{where}.resources")
    pull = _str(w, "imagePullPolicy", where) or None
    if pull is not None and pull not in PULL_POLICIES:
        raise SpecInvalid(f"{where}.imagePullPolicy", f"must be one of {', '.join(PULL_POLICIES)}, got {pull!r:.80}")
    return WarmerContainer(
        image=_matching(w, "image", where, IMAGE_RE, "an image reference") or None,
        image_pull_policy=pull,
        python=_matching(w, "python", where, PYTHON_RE, "an executable path") or None,
        resources=resources,
    )


def parse_prewarm(data: Any, cache: CacheVolume) -> PrewarmSpec:
    """spec.prewarm; ``nodes`` only with a hostPath cache (one Job per node)."""
    where = "spec.prewarm"
    p = _obj(data, where)
    enabled = p.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SpecInvalid(f"{where}.enabled", f"must be true or false, got {enabled!r}")
    timeout = p.get("timeoutSeconds")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 86400):
        raise SpecInvalid(f"{where}.timeoutSeconds", f"must be an integer from 1 to 86400, got {timeout!r}")
    if p.get("nodes") is None:
        return PrewarmSpec(enabled, timeout)
    nodes = _obj(p.get("nodes"), f"{where}.nodes")
    if "hostPath" not in cache.source:
        raise SpecInvalid(f"{where}.nodes", "applies to a hostPath cache only (a PVC is one cache: one Job); "
                          "remove it or use spec.cache.hostPath")
    source = nodes.get("source")
    if source not in NODE_SOURCES:
        raise SpecInvalid(f"{where}.nodes.source", f"must be one of {', '.join(NODE_SOURCES)}, got {source!r:.80}")
    if (source == "Selector") != (nodes.get("selector") is not None):
        raise SpecInvalid(f"{where}.nodes.selector", "is required with source Selector and only allowed with it")
    labels, exprs = parse_selector(nodes["selector"], f"{where}.nodes.selector") if source == "Selector" else ({}, ())
    return PrewarmSpec(enabled, timeout, source, labels, exprs)


def render_warmer(spec: Mapping[str, Any], cache_dir: str) -> WarmerSpec:
    """The warmer's contract from the CR's spec: parsed by the warmer's own model."""
    data = {k: spec[k] for k in WARMER_KEYS if k in spec}
    data["cacheDir"] = cache_dir
    try:
        return WarmerSpec.from_dict(data)
    except SpecError as exc:
        msg = exc.message
        path = exc.field if exc.field != "<spec>" else ""
        # ModelSource reports its own fields relative to itself.
        if path in ("configPath",):
            path = "model." + path
        raise SpecInvalid(f"spec.{path}" if path else "spec", msg) from None


def parse_spec(spec: Any, namespace: str = "") -> KernelWarmupSpec:
    """Parse a KernelWarmup's ``spec`` (of ``namespace``: its cache's trust domain); raises
    SpecInvalid naming the field."""
    spec = _obj(spec, "spec")
    unknown = sorted(set(spec) - set(WARMER_KEYS) - set(OPERATOR_KEYS))
    if unknown:
        raise SpecInvalid("spec", f"unknown field(s) {', '.join(unknown)}")
    if "model" not in spec:
        raise SpecInvalid("spec.model", "is required (configPath or layers)")
    targets = parse_targets(spec.get("targets"))
    cache = parse_cache(spec.get("cache"), namespace)
    container = parse_container(spec.get("warmer"))
    serving = _str(spec, "servingContainer", "spec") or None
    site = spec.get("sitecustomize", True)
    if not isinstance(site, bool):
        raise SpecInvalid("spec.sitecustomize", f"must be true or false, got {site!r}")
    warmer = render_warmer(spec, cache.mount_path)
    fields = {**{k: spec[k] for k in WARMER_KEYS if k in spec}, "cacheDir": cache.mount_path}
    prewarm = parse_prewarm(spec.get("prewarm"), cache)
    engine_warmup = spec.get("engineWarmup", "auto")
    if engine_warmup not in ENGINE_WARMUP:
        raise SpecInvalid("spec.engineWarmup", f"must be one of {', '.join(ENGINE_WARMUP)}, got {engine_warmup!r:.80}")
    return KernelWarmupSpec(targets, cache, container, warmer, serving, site, fields, prewarm, engine_warmup)
