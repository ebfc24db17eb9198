"""What the serving container's own ``vllm serve`` command decides, merged into the warmer's
spec (pure).

The KernelWarmup's warmer fields are overrides: a field it leaves unset is taken from the
command (``kernel_warmer.engine`` knows which flag feeds which field); a field it sets wins,
and a different value on the command line becomes a warning naming both. The result also
says, per field, what was used and where it came from, for the status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from kernel_warmer.engine import EngineArgError, command_paths, get_path, merge_into_spec, parse_serve
from kernel_warmer.spec import SpecError, WarmerSpec
from warmup_operator.core.containers import InjectionError
from warmup_operator.core.kernelwarmup import KernelWarmupSpec


@dataclass(frozen=True)
class ServingEngine:
    """The warmer spec for one serving container, and how it was derived."""

    warmer: WarmerSpec
    # spec path -> {"value": ..., "from": "args --tensor-parallel-size" | "KernelWarmup"}
    derived: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    found: bool = False  # the container runs vLLM's server


def literal_env(container: dict) -> dict[str, Optional[str]]:
    """The container's env by name; None where the value comes from ``valueFrom``."""
    return {e["name"]: e.get("value") if "valueFrom" not in e else None
            for e in container.get("env") or [] if isinstance(e, dict) and e.get("name")}


def serving_engine(spec: KernelWarmupSpec, serving: dict) -> ServingEngine:
    """Merge what ``serving``'s command sets into the KernelWarmup's warmer fields."""
    where = f"spec.template.spec.containers[{serving.get('name', '?')}]"
    try:
        serve = parse_serve(serving.get("command") or [], serving.get("args") or [], literal_env(serving))
    except EngineArgError as exc:
        raise InjectionError(f"{where}.args {exc.field}", f"{exc.message} (vLLM would refuse to start with it)") from None
    if serve is None:
        return ServingEngine(spec.warmer, _cr_values(spec), (
            f"container {serving.get('name')!r} does not run `vllm serve`: the warmer plans from the KernelWarmup alone",))
    merged, conflicts = merge_into_spec(spec.warmer_fields, serve)
    try:
        warmer = WarmerSpec.from_dict(merged)
    except SpecError as exc:
        raise InjectionError(f"spec.{exc.field}", exc.message) from None
    derived = _cr_values(spec)
    derived.update({path: {"value": value, "from": serve.sources[path]} for path, value in serve.settings.items()
                    if not any(c.path == path for c in conflicts) and path not in derived})
    warnings = [c.message() for c in conflicts] + [n for n in serve.notes if not n.startswith("read from")]
    return ServingEngine(warmer, derived, tuple(warnings), True)


def _cr_values(spec: KernelWarmupSpec) -> dict[str, dict[str, Any]]:
    """The command-settable fields the KernelWarmup itself sets."""
    out = {}
    for path in sorted(command_paths()):
        value = get_path(spec.warmer_fields, path)
        if value is not None and value != "auto":
            out[path] = {"value": value, "from": "KernelWarmup"}
    return out
