"""The cache key follows the work, field by field (issue 23).

Every leaf field of the warmer spec is changed, one at a time, to another valid value; the
warmer then runs (in this process, on an H100 stood in for by its NVML facts) with the
Triton compiler and the FlashInfer phase replaced by recorders at their doors, so what is
recorded is exactly the work ``run`` hands them. The key must change exactly when that work
does. A field the spec gains later is changed by this test too (the list is the spec's own).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pytest

from kernel_warmer import runner, versions
from kernel_warmer.gpu import GpuFacts
from kernel_warmer.spec import WarmerSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
H100 = GpuFacts("NVIDIA H100 80GB HBM3", 90, 80 << 30, 2)
# Qwen3-30B-A3B (a MoE) at TP 2, with the fork's TRITON_ATTN + NVFP4-KV site reached, so the
# Triton half, the tuned ops and the JIT calls all have work that a field can change
BASE = {"model": {"configPath": str(FIXTURES / "qwen3-30b-a3b.json")}, "tensorParallelSize": 2,
        "triton": {"provider": "builtin"},
        "engine": {"attentionBackend": "TRITON_ATTN", "kvCacheDtype": "nvfp4", "moeBackend": "flashinfer_cutlass"},
        "server": {"args": ["Qwen/Qwen3-30B-A3B", "-tp", "2", "--moe-backend", "flashinfer_cutlass"]}}
# Another valid value for a field whose type alone does not give one
OTHER = {"server.pythonpath": "/kernel-warmup/site", "server.warmup": "never", "model.configPath": str(FIXTURES / "mixtral-8x7b.json"), "cacheDir": "/elsewhere",
         "triton.compileOnlyTarget": "sm_100", "distributed.masterAddr": "10.0.0.9",
         "engine.quantization": "fp8", "tensorParallelSize": 4, "flashinfer.maxNumBatchedTokens": 64,
         "triton.provider": "auto"}  # auto: vLLM is not importable here, so nothing of vLLM's to compile


def leaves(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted camelCase path, type) of every leaf field of the spec, recursively."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = prefix + _camel(f.name)
        tp = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out += leaves(tp, path + ".")
        else:
            out.append((path, tp))
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def current(path: str) -> Any:
    """The base spec's value of a field (its default where BASE leaves it out)."""
    node: Any = WarmerSpec.from_dict(BASE)
    for part in path.split("."):
        node = getattr(node, "".join("_" + c.lower() if c.isupper() else c for c in part))
    return node


def alternative(path: str, tp: Any, value: Any) -> Optional[Any]:
    if path in OTHER:
        return OTHER[path]
    if typing.get_origin(tp) is Literal:
        return next((c for c in typing.get_args(tp) if c != value and c != "auto"), None)
    if tp is bool:
        return not value
    if tp is int:
        return (value or 1) + 1
    if tp is float:
        return (value or 1.0) * 2
    return None  # lists (model.layers): the config path stands for the model here


def with_value(path: str, value: Any) -> dict:
    doc = copy.deepcopy(BASE)
    node = doc
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return doc


@pytest.fixture()
def h100(monkeypatch):
    """An H100 (its NVML facts) in an image with vLLM 0.33.0 and the FlashInfer it pins."""
    monkeypatch.setattr(runner, "probe_gpu", lambda: H100)
    rt = versions.Runtime("0.33.0", "0.7.2.post1", "2.14.0", "3.8.0", "13.0", versions.vllm("0.33.0"),
                          versions.flashinfer("0.7.2.post1"))
    monkeypatch.setattr(runner.versions, "read_runtime", lambda: rt)


@pytest.fixture()
def observe(monkeypatch, tmp_path, h100):
    """spec -> (key, the work the executors were handed)."""
    import kernel_warmer.flashinfer.phase as phase
    import kernel_warmer.triton.compile as compile_mod
    from kernel_warmer.server import phase as server_phase

    monkeypatch.setattr(server_phase, "image_has_vllm", lambda: True)
    monkeypatch.setattr(server_phase, "pod_has_gpu", lambda: True)
    seen: dict[str, Any] = {}

    def compile_variants(variants, cache_dir, provider, target=None, **_):
        seen["triton"] = (provider, target, sorted(v.label for v in variants))
        return []

    def run_phase(spec, arch, layout, log, planned=None):
        seen["flashinfer"] = None if planned is None else (
            [o.to_dict() for o in planned.ops], [c.to_dict() for c in planned.calls], planned.world)
        return {"status": "ok", "files": []}

    def run_engine(spec, layout, serve, deadline, log):
        seen["server"] = serve.key_tokens()
        return {"status": "ok", "seconds": 1.0, "files": []}

    monkeypatch.setattr(server_phase, "run_engine", run_engine)
    monkeypatch.setattr(compile_mod, "compile_variants", compile_variants)
    monkeypatch.setattr(phase, "run_phase", run_phase)
    count = iter(range(10 ** 6))

    def go(doc: dict) -> tuple[str, Any]:
        seen.clear()
        doc = {**doc, "cacheDir": str(tmp_path / f"c{next(count)}") + doc.get("cacheDir", "")}
        summary = runner.run(WarmerSpec.from_dict(doc), log=lambda s: None)
        assert summary.status == "ok", summary.error
        return summary.cache_key, (seen.get("triton"), seen.get("flashinfer"), seen.get("server"))

    return go


def test_the_key_changes_exactly_when_the_work_does(observe):
    base_key, base_work = observe(BASE)
    assert base_work[0][2] and base_work[1][0] and base_work[1][0][0]["op"] == "cutlass_fused_moe"
    changed, unchanged = [], []
    for path, tp in leaves(WarmerSpec):
        value = alternative(path, tp, current(path))
        if value is None:
            continue
        try:
            WarmerSpec.from_dict(with_value(path, value))
        except ValueError:
            continue  # not a valid combination (the spec says why); nothing to warm
        key, work = observe(with_value(path, value))
        assert (key != base_key) == (work != base_work), (path, value, work, base_work)
        (changed if work != base_work else unchanged).append(path)
    # the test is not vacuous: fields on both sides, the ones issue 23 named among them
    assert {"engine.moeBackend", "engine.kvCacheDtype", "tensorParallelSize", "model.configPath",
            "flashinfer.maxNumBatchedTokens", "flashinfer.enabled", "triton.enabled", "server.warmup"} <= set(changed), \
        changed
    assert {"timeoutSeconds", "failurePolicy", "triton.workers", "flashinfer.tuning", "cacheDir",
            "distributed.timeoutSeconds", "server.pythonpath"} <= set(unchanged), unchanged


def test_adding_the_moe_backend_flag_changes_the_key(h100):
    """The case issue 23 found: `--moe-backend flashinfer_cutlass` added to a serving
    command takes the plan from 0 to 1 tuned op; the key used to stay the same."""
    base = {k: v for k, v in BASE.items() if k != "engine"}
    plain = runner.resolve(WarmerSpec.from_dict(base))
    moe = runner.resolve(WarmerSpec.from_dict({**base, "engine": {"moeBackend": "flashinfer_cutlass"}}))
    assert plain.key != moe.key


def test_without_nvml_the_inputs_stand_in_for_the_flashinfer_work(monkeypatch):
    monkeypatch.setattr(runner, "probe_gpu", lambda: None)
    rt = versions.Runtime("0.33.0", "0.7.2.post1", None, None, None, versions.vllm("0.33.0"),
                          versions.flashinfer("0.7.2.post1"))
    monkeypatch.setattr(runner.versions, "read_runtime", lambda: rt)
    r = runner.resolve(WarmerSpec.from_dict(BASE))
    assert r.flashinfer is None and r.key_doc["flashinfer"]["unresolved"]["engine"]["moe_backend"] == "flashinfer_cutlass"


@pytest.mark.parametrize("extra,same", [
    (["--load-format", "safetensors"], True), (["--load_format=dummy"], True),  # vLLM's key skips the load format
    (["--max-model-len", "4096"], False), (["--enforce-eager"], False),  # these change what vLLM compiles
])
def test_the_serving_args_key_the_engine_phase_but_the_load_format(observe, extra, same):
    base_key, _ = observe(BASE)
    doc = copy.deepcopy(BASE)
    doc["server"]["args"] = [*doc["server"]["args"], *extra]
    key, work = observe(doc)
    assert (key == base_key) is same, (extra, work)
