"""kernel_warmer.versions: one row per release range, picked for the image's versions, and
rows that match the released code (read from each release's PyPI wheel)."""

from __future__ import annotations

import ast
import hashlib
import zipfile

import pytest

import vllm_kernel  # tests/support: the wheels, downloaded once

from kernel_warmer import versions

GIB = 1 << 30


@pytest.mark.parametrize("text,expected", [
    ("0.7.2.post1", (0, 7, 2)), ("0.34.0+cu130", (0, 34, 0)), ("v0.26", (0, 26, 0)), ("2.11.0", (2, 11, 0)),
    ("", None), (None, None), ("nightly", None),
])
def test_versions_parse_as_releases(text, expected):
    assert versions.parse_version(text) == expected


@pytest.mark.parametrize("version,label", [("0.26.0", "0.26"), ("0.27.1", "0.27"), ("0.33.0", "0.33"),
                                           ("0.33.2", "0.33"), ("0.34.0", "0.34")])
def test_a_known_release_gets_its_row_and_no_warning(version, label):
    pick = versions.vllm(version)
    assert pick.facts.label == label and pick.exact


@pytest.mark.parametrize("version,nearest", [("0.35.0", "0.34"), ("1.2.0", "0.34"), ("0.25.1", "0.26")])
def test_an_unknown_release_is_planned_with_the_nearest_row_and_a_warning_naming_both(version, nearest):
    pick = versions.vllm(version)
    assert pick.facts.label == nearest and not pick.exact
    assert f"vLLM {version} is not a release this warmer knows" in pick.warning
    assert f"planned with the facts of vLLM {nearest}" in pick.warning


def test_not_installed_is_no_warning_and_unreadable_is_one():
    assert versions.vllm(None).exact
    assert "unreadable" in versions.vllm("main").warning


@pytest.mark.parametrize("version,per_rank", [("0.6.18", True), ("0.7.0.post1", True), ("0.7.1", True),
                                              ("0.7.2", False), ("0.7.2.post1", False), ("0.7.4", False)])
def test_flashinfer_key_format_by_release(version, per_rank):
    """The ranks left the fused-MoE key in 0.7.2 (0.7.1's core.py still has them)."""
    pick = versions.flashinfer(version)
    assert pick.exact and pick.facts.moe_key.per_rank is per_rank


def test_a_newer_flashinfer_gets_the_newest_format_with_a_warning():
    pick = versions.flashinfer("0.8.1")
    assert pick.facts.moe_key is versions.MOE_KEY_SHARED and "FlashInfer 0.8.1" in pick.warning


@pytest.mark.parametrize("version,memory,name,cap,expected", [
    ("0.33.0", 80 * GIB, "NVIDIA H100 80GB HBM3", 90, 8192),
    ("0.33.0", 141 * GIB, "NVIDIA H200", 90, 8192),
    ("0.33.0", 80 * GIB, "NVIDIA A100-SXM4-80GB", 80, 2048),
    ("0.33.0", 192 * GIB, "NVIDIA B200", 100, 16384),
    ("0.26.0", 192 * GIB, "NVIDIA B200", 100, 8192),  # no 16384 tier before 0.28
    ("0.28.0", 192 * GIB, "NVIDIA B200", 100, 16384),
    ("0.33.0", 120 * GIB, "NVIDIA GB10", 121, 2048),  # GB10 out of the 8192 tier from 0.33
    ("0.32.0", 120 * GIB, "NVIDIA GB10", 121, 8192),
    ("0.33.0", 24 * GIB, "NVIDIA L4", 89, 2048),
])
def test_default_max_num_batched_tokens_follows_each_release(version, memory, name, cap, expected):
    assert versions.vllm(version).facts.default_max_num_batched_tokens(memory, name, cap) == expected


def test_runtime_warns_of_a_flashinfer_other_than_the_pin():
    rt = versions.Runtime("0.33.0", "0.6.18", "2.14.0", "3.8.0", "13.0", versions.vllm("0.33.0"),
                          versions.flashinfer("0.6.18"))
    assert rt.warnings() == ["vLLM 0.33.0 pins flashinfer-python==0.7.2.post1; this image has 0.6.18: tactics "
                             "follow the installed FlashInfer"]
    assert versions.Runtime("0.33.0", "0.7.2.post1", None, None, None, versions.vllm("0.33.0"),
                            versions.flashinfer("0.7.2.post1")).warnings() == []
    assert versions._cuda_of_torch("2.11.0+cu130") == "13.0" and versions._cuda_of_torch("2.11.0") is None


def test_a_flag_value_the_release_does_not_take_is_named():
    from kernel_warmer.spec import EngineSection

    engine = EngineSection(kv_cache_dtype="nvfp4_4over6", moe_backend="batched_triton")
    got = versions.unknown_names(versions.vllm("0.26.0").facts, engine)
    assert got == ["--kv-cache-dtype nvfp4_4over6 is not one vLLM 0.26 takes: the server will refuse this command",
                   "--moe-backend batched_triton is not one vLLM 0.26 takes: the server will refuse this command"]
    assert versions.unknown_names(versions.vllm("0.33.0").facts, engine) == []


def test_rows_cover_every_release_from_the_oldest_without_a_gap():
    rows = versions.VLLM
    assert [r.until for r in rows[:-1]] == [r.since for r in rows[1:]]
    assert versions.FLASHINFER[0].until == versions.FLASHINFER[1].since


# --- the rows against the released code -------------------------------------------------


def _source(version: str, path: str) -> str:
    with zipfile.ZipFile(vllm_kernel.wheel_path(version)) as zf:
        return zf.read(path).decode()


def _enum_members(src: str, cls: str) -> list[str]:
    node = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ClassDef) and n.name == cls)
    return [t.id for b in node.body if isinstance(b, ast.Assign) for t in b.targets
            if isinstance(t, ast.Name) and not t.id.startswith("_")]


def _literal(src: str, name: str) -> list[str]:
    for n in ast.parse(src).body:
        target = n.targets[0] if isinstance(n, ast.Assign) else getattr(n, "target", None)
        if isinstance(target, ast.Name) and target.id == name:
            return [c.value for c in ast.walk(n.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    raise AssertionError(f"{name} not found")


@pytest.mark.parametrize("version", vllm_kernel.VERSIONS)
def test_a_row_holds_its_releases_names_kernel_and_pins(version):
    facts = versions.vllm(version).facts
    registry = _source(version, "vllm/v1/attention/backends/registry.py")
    kernel_cfg = _source(version, "vllm/config/kernel.py")
    assert set(facts.names.attention) == set(_enum_members(registry, "AttentionBackendEnum"))
    assert set(facts.names.kv_cache) == set(_literal(_source(version, "vllm/config/cache.py"), "CacheDType"))
    assert set(facts.names.moe) == set(_literal(kernel_cfg, "MoEBackend"))
    assert set(facts.names.linear) == set(_literal(kernel_cfg, "LinearBackend"))
    kernel = _source(version, vllm_kernel.KERNEL)
    assert hashlib.sha256(kernel.encode()).hexdigest() == facts.kernel_sha256
    assert facts.kernel_asks_shared_memory == ("get_max_shared_memory_bytes" in kernel)
    with zipfile.ZipFile(vllm_kernel.wheel_path(version)) as zf:
        meta = zf.read(f"vllm-{version}.dist-info/METADATA").decode()
    assert f"Requires-Dist: torch=={facts.torch}" in meta
    assert f"Requires-Dist: flashinfer-python=={facts.flashinfer}" in meta
    # EnableDisableAction pairs --enable-x with --disable-x (0.33 on); before, BooleanOptionalAction's --no-x only
    assert facts.disable_flags == ("class EnableDisableAction" in _source(version, "vllm/utils/argparse_utils.py"))
