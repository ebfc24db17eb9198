"""The CRD's schema stays in step with the warmer's contract (WarmerSpec)."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml

from kernel_warmer.spec import WarmerSpec, camel
from warmup_operator.core.kernelwarmup import OPERATOR_DERIVED, OPERATOR_KEYS, WARMER_KEYS, parse_spec

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts/kernel-warmup/crds/kernelwarmups.kernelwarmup.dev.yaml"


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load(CRD.read_text())


def spec_schema(crd: dict) -> dict:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _dataclass_of(tp):
    """The dataclass inside Optional[...] / list[...], if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_of(arg)
        if found:
            return found
    return None


def walk(dc, schema: dict, path: str, missing: list, defaults: list) -> None:
    hints = typing.get_type_hints(dc)
    props = schema.get("properties") or {}
    for f in dataclasses.fields(dc):
        key = camel(f.name)
        if dc is WarmerSpec and f.name in OPERATOR_DERIVED:
            continue  # rendered by the operator (cacheDir from spec.cache.mountPath, server from the Pod)
        if key not in props:
            missing.append(f"{path}.{key}")
            continue
        sub = props[key]
        if sub.get("type") == "array":
            sub = sub["items"]
        inner = _dataclass_of(hints[f.name])
        if inner is not None:
            walk(inner, sub, f"{path}.{key}", missing, defaults)
        elif f.default is not dataclasses.MISSING and f.default is not None:
            defaults.append((f"{path}.{key}", f.default, props[key].get("default")))


def command_fields() -> set[str]:
    """spec.<path> of every field the serving command can set (kernel_warmer.engine)."""
    from kernel_warmer.engine import command_paths

    return {f"spec.{p}" for p in command_paths()}


def test_crd_schema_covers_every_warmer_field(crd):
    missing: list[str] = []
    defaults: list = []
    walk(WarmerSpec, spec_schema(crd), "spec", missing, defaults)
    assert missing == [], f"CRD schema lacks WarmerSpec fields: {missing}"
    wrong = [(p, d, c) for p, d, c in defaults if c is not None and c != d]
    assert wrong == [], f"CRD defaults differ from WarmerSpec defaults (path, dataclass, crd): {wrong}"
    # Every scalar default of the contract is declared in the CRD, so `kubectl explain` shows it,
    # except where the serving command decides (a CRD default would hide the command's value).
    undeclared = [p for p, d, c in defaults if c is None and p not in command_fields()]
    assert undeclared == [], undeclared


def test_fields_the_serving_command_sets_have_no_crd_default(crd):
    """A default would make every KernelWarmup "set" the field and override the command."""
    schema = spec_schema(crd)
    assert "default" not in schema["properties"]["engine"]
    with_default = []
    for path in sorted(command_fields()):
        node = schema
        for part in path.split(".")[1:]:
            node = node["properties"][part]
        if "default" in node and node["default"] != "auto":  # "auto" reads as unset
            with_default.append(path)
    assert with_default == []
    # and every such field exists in the contract (one name, declared once, in spec.py)
    spec = WarmerSpec.from_dict({"model": {"configPath": "x"}})
    for path in command_fields():
        obj = spec
        for part in path.split(".")[1:]:
            obj = getattr(obj, {camel(f.name): f.name for f in dataclasses.fields(obj)}[part])


def test_crd_has_no_warmer_field_the_contract_lacks(crd):
    props = set(spec_schema(crd)["properties"])
    operator_only = set(OPERATOR_KEYS)
    assert props - operator_only == set(WARMER_KEYS)


def test_crd_metadata(crd):
    assert crd["spec"]["group"] == "kernelwarmup.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["shortNames"] == ["kw"]
    (v,) = crd["spec"]["versions"]
    assert v["name"] == "v1alpha1" and v["subresources"] == {"status": {}}
    cols = [c["name"] for c in v["additionalPrinterColumns"]]
    assert cols == ["Targets", "Ready", "Last Warmup", "Age"]


def _described(schema: dict, path: str, out: list) -> None:
    for k, sub in (schema.get("properties") or {}).items():
        if "description" not in sub and path.count(".") < 2 and k not in ("matchLabels", "matchExpressions"):
            out.append(f"{path}.{k}")
        _described(sub.get("items", sub), f"{path}.{k}", out)


def test_top_level_fields_are_described(crd):
    undocumented: list[str] = []
    _described(spec_schema(crd), "spec", undocumented)
    # Leaves of small sections (e.g. triton.enabled) may rely on the section's text.
    assert [p for p in undocumented if p.count(".") == 1] == []


EXAMPLE_SPEC = {
    "targets": {"selector": {"matchLabels": {"app": "vllm"}}},
    "model": {"configPath": "/models/llama/config.json"},
    "tensorParallelSize": 4,
    "dtype": "bfloat16",
    "triton": {"enabled": True, "provider": "vllm", "workers": 8, "compileOnlyTarget": "sm_90"},
    "flashinfer": {"enabled": True, "quantization": "fp8", "maxNumBatchedTokens": 16384, "tuning": "rank0"},
    "distributed": {"worldSize": 8, "rank": 0, "masterPort": 29600, "timeoutSeconds": 120},
    "failurePolicy": "Ignore",
    "timeoutSeconds": 900,
    "cache": {"mountPath": "/var/cache/kw", "hostPath": {"path": "/var/lib/kw", "type": "DirectoryOrCreate"}},
}


def test_round_trip_cr_spec_to_warmer_json_and_back():
    spec = parse_spec(EXAMPLE_SPEC)
    text = spec.warmer.to_json()
    back = WarmerSpec.from_json(text)
    assert back == spec.warmer
    data = json.loads(text)
    for key in WARMER_KEYS:
        if key in EXAMPLE_SPEC:
            assert data[key] == EXAMPLE_SPEC[key], key
    assert data["cacheDir"] == "/var/cache/kw"


def test_round_trip_explicit_layers():
    layers = [{"numHeads": 32, "numKvHeads": 8, "headSize": 128, "count": 20},
              {"numHeads": 32, "numKvHeads": 8, "headSize": 128, "count": 12, "slidingWindow": 4096, "softcap": 50.0}]
    spec = parse_spec({"targets": {"names": ["a"]}, "model": {"layers": layers, "hiddenSize": 4096}})
    back = WarmerSpec.from_json(spec.warmer.to_json())
    assert back == spec.warmer
    assert back.model.layers[1].sliding_window == 4096 and back.model.hidden_size == 4096


def test_walker_notices_a_missing_nested_field(crd):
    schema = json.loads(json.dumps(spec_schema(crd)))
    del schema["properties"]["model"]["properties"]["layers"]["items"]["properties"]["chunkedLookback"]
    schema["properties"]["timeoutSeconds"]["default"] = 1
    missing: list[str] = []
    defaults: list = []
    walk(WarmerSpec, schema, "spec", missing, defaults)
    assert missing == ["spec.model.layers.chunkedLookback"]
    assert ("spec.timeoutSeconds", 1800, 1) in defaults


def _schema_nodes(node, path="schema"):
    if isinstance(node, dict):
        for k, v in (node.get("properties") or {}).items():
            yield f"{path}.{k}", v
            yield from _schema_nodes(v, f"{path}.{k}")
        if isinstance(node.get("items"), dict):
            yield from _schema_nodes(node["items"], f"{path}[]")


def test_every_schema_node_is_a_typed_object(crd):
    """Catches YAML slips (a comma inside an unquoted flow-mapping description makes a new key)."""
    (v,) = crd["spec"]["versions"]
    allowed = {"type", "description", "default", "enum", "pattern", "minimum", "maximum", "exclusiveMinimum",
               "minLength", "maxLength", "minItems", "maxItems", "items", "properties", "required", "format",
               "additionalProperties", "x-kubernetes-validations", "x-kubernetes-list-type",
               "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-preserve-unknown-fields",
               "x-kubernetes-int-or-string"}
    for path, node in _schema_nodes(v["schema"]["openAPIV3Schema"]):
        assert isinstance(node, dict), path
        assert set(node) <= allowed, (path, set(node) - allowed)
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path


def test_the_default_mount_path_is_one_fact(crd):
    """Issue 24 item 1: the CRD's default cache mount path, the operator's and the warmer's
    are kernel_warmer.spec.DEFAULT_CACHE_DIR."""
    from kernel_warmer.spec import DEFAULT_CACHE_DIR
    cache = spec_schema(crd)["properties"]["cache"]["properties"]["mountPath"]
    assert cache["default"] == DEFAULT_CACHE_DIR == WarmerSpec.__dataclass_fields__["cache_dir"].default
    parsed = parse_spec({"targets": {"names": ["x"]}, "model": {"configPath": "/m/config.json"}})
    assert parsed.cache.mount_path == DEFAULT_CACHE_DIR
