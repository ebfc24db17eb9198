"""The cache volume is untrusted input (issue 11, item 5; item 10's `check`): a manifest
that names anything but a clean relative path to a regular file inside the cache is
damaged — cold, and never a target to read or delete; odd things where the cache's own
folders and manifest should be are replaced; a Triton group file written at another mount
path is a miss, so a copied or differently mounted cache reads as cold and is rebuilt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.sites import FORK_SITE

from kernel_warmer.cache.manifest import file_entries, manifest_key, repair, verify, write_manifest
from kernel_warmer.cache.untrusted import UnsafePath, check_relpath
from kernel_warmer.cache.volume import CacheLayout

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer"))
ENV.pop("KUBERNETES_SERVICE_HOST", None)
KEY = manifest_key({"triton": ["v1"]}, {"target": "sm_90"})


def make_cache(root: Path) -> tuple[CacheLayout, list[Path]]:
    """Two Triton-like entries, one with a group file naming its children absolutely."""
    layout = CacheLayout(root)
    layout.create()
    files = []
    for h in ("AAAA", "BBBB"):
        d = layout.triton_dir / h
        d.mkdir()
        for ext in ("cubin", "json"):
            p = d / f"_kernel.{ext}"
            p.write_bytes(f"{h}-{ext}".encode() * 100)
            files.append(p)
    grp = layout.triton_dir / "AAAA" / "__grp___kernel.json"
    grp.write_text(json.dumps({"child_paths": {p.name: str(p) for p in files[:2]}}))
    files.append(grp)
    write_manifest(layout, KEY, {}, {}, file_entries(layout, files), {})
    return layout, files


def poison(layout: CacheLayout, path: object) -> None:
    """Add one entry naming ``path`` to an otherwise valid manifest."""
    doc = json.loads(layout.manifest_path(KEY).read_text())
    doc["files"].append({"path": path, "sha256": "0" * 64, "size": 1})
    layout.manifest_path(KEY).write_text(json.dumps(doc))


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.mkdir()
    (v / "precious").write_text("do not delete")
    return v


def assert_victim_intact(victim: Path) -> None:
    assert (victim / "precious").read_text() == "do not delete"


@pytest.mark.parametrize("entry", ["../victim", "../victim/precious", "triton/../../victim", "/ABS",
                                   "triton//AAAA/_kernel.cubin", "./triton/AAAA/_kernel.cubin",
                                   "manifests/other.json", ".lock", "triton", 7, None, "triton\\AAAA"])
def test_unclean_entry_makes_the_manifest_damaged_and_nothing_outside_is_touched(tmp_path, victim, entry):
    layout, _ = make_cache(tmp_path / "cache")
    poison(layout, str(victim / "precious") if entry == "/ABS" else entry)
    v = verify(layout, KEY)
    assert not v.warm and v.damaged and v.bad_files == [], v
    removed = repair(layout, KEY, v.bad_files)
    assert removed == [f"manifests/{KEY}.json"]
    assert_victim_intact(victim)
    assert (layout.triton_dir / "AAAA" / "_kernel.cubin").exists()  # healthy entries stay


def test_repair_refuses_unclean_paths_even_if_asked(tmp_path, victim):
    layout, _ = make_cache(tmp_path / "cache")
    removed = repair(layout, KEY, ["../victim", str(victim / "precious"), "triton/../../victim"])
    assert removed == [f"manifests/{KEY}.json"]
    assert_victim_intact(victim)


def test_symlink_out_of_the_cache_is_never_followed(tmp_path, victim):
    layout, _ = make_cache(tmp_path / "cache")
    (layout.triton_dir / "EVIL").symlink_to(victim)
    poison(layout, "triton/EVIL/precious")
    v = verify(layout, KEY)
    assert not v.warm and v.damaged and "symlink" in v.reason
    repair(layout, KEY, ["triton/EVIL/precious"])  # even when named, the link is the target
    assert_victim_intact(victim)


def test_symlinked_file_fifo_and_device_are_damage_not_reads(tmp_path):
    layout, _ = make_cache(tmp_path / "cache")
    d = layout.triton_dir / "CCCC"
    d.mkdir()
    (d / "zero").symlink_to("/dev/zero")
    os.mkfifo(d / "fifo")
    for name in ("zero", "fifo"):
        poison(layout, f"triton/CCCC/{name}")
        start = time.monotonic()
        v = verify(layout, KEY)
        assert not v.warm and v.damaged, v
        assert time.monotonic() - start < 2  # neither read nor waited on
        make_cache_manifest_again(layout)


def make_cache_manifest_again(layout: CacheLayout) -> None:
    doc = json.loads(layout.manifest_path(KEY).read_text())
    doc["files"] = doc["files"][:-1]
    layout.manifest_path(KEY).write_text(json.dumps(doc))
    assert verify(layout, KEY).warm


@pytest.mark.parametrize("what", ["folder", "fifo", "symlink-zero", "deep-json", "huge-json"])
def test_odd_things_in_place_of_the_manifest_read_as_cold(tmp_path, what):
    layout, _ = make_cache(tmp_path / "cache")
    m = layout.manifest_path(KEY)
    m.unlink()
    if what == "folder":
        (m / "sub").mkdir(parents=True)
    elif what == "fifo":
        os.mkfifo(m)
    elif what == "symlink-zero":
        m.symlink_to("/dev/zero")
    elif what == "deep-json":
        m.write_text("[" * 200_000 + "]" * 200_000)
    else:
        m.write_bytes(b" " * (17 << 20))
    start = time.monotonic()
    v = verify(layout, KEY)
    assert not v.warm and v.damaged
    assert time.monotonic() - start < 5
    assert repair(layout, KEY, []) == [f"manifests/{KEY}.json"] and not os.path.lexists(m)


def test_symlinked_cache_folders_are_replaced_not_followed(tmp_path, victim):
    layout = CacheLayout(tmp_path / "cache")
    layout.root.mkdir()
    (layout.root / "manifests").symlink_to(victim)
    (layout.root / "triton").write_text("not a folder")
    notes = layout.create()
    assert len(notes) == 2 and layout.manifests_dir.is_dir() and not layout.manifests_dir.is_symlink()
    assert layout.triton_dir.is_dir()
    assert_victim_intact(victim)


def test_sweep_removes_planted_symlinks_but_nothing_they_point_at(tmp_path, victim):
    layout, _ = make_cache(tmp_path / "cache")
    (victim / ".x.tmp").write_text("victim's own temp file")
    (layout.triton_dir / "LINK").symlink_to(victim)
    (layout.flashinfer_root / "LINK").symlink_to(victim)
    removed = layout.sweep_temp_files()
    assert {p.name for p in removed} == {"LINK"}
    assert (victim / ".x.tmp").exists()
    assert_victim_intact(victim)


def test_check_relpath_accepts_only_clean_cache_paths():
    assert check_relpath("triton/AB/x.cubin") == "triton/AB/x.cubin"
    assert check_relpath("flashinfer/k/autotune.json") == "flashinfer/k/autotune.json"
    jit_module = "flashinfer-jit/.cache/flashinfer/0.6.18/90a/cached_ops/fused_moe_90/fused_moe_90.so"
    assert check_relpath(jit_module) == jit_module  # FlashInfer's JIT layout, on the volume
    for bad in ("", "/etc/passwd", "flashinfer-jitx/a", "triton/../x", "triton/./x", "a/b", "triton/" + "d/" * 20 + "f", "x" * 2000):
        with pytest.raises(UnsafePath):
            check_relpath(bad)


# --- a cache at another path: Triton's group files hold absolute paths (item 10) ----------


def test_cache_copied_to_another_path_is_cold_and_repair_removes_the_entry(tmp_path):
    layout, _ = make_cache(tmp_path / "a")
    assert verify(layout, KEY).warm
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    moved = CacheLayout(tmp_path / "b")
    v = verify(moved, KEY)
    assert not v.warm and v.bad_files == ["triton/AAAA/__grp___kernel.json"], v
    assert "another path" in v.reason
    assert repair(moved, KEY, v.bad_files) == ["manifests/" + KEY + ".json", "triton/AAAA"]
    assert (moved.triton_dir / "BBBB").is_dir()
    assert verify(layout, KEY).warm  # the original is untouched


def warmer(sub: str, plan: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernel_warmer", sub, "--plan", str(plan), "--cache-dir", str(cache),
                           "--target", "sm_90", "--no-flashinfer", *FORK_SITE, *extra], capture_output=True, text=True,
                          env=ENV, timeout=300)


def test_real_triton_cache_copied_elsewhere_is_cold_for_check_and_run_rebuilds(tmp_path):
    """A real compile-only cache (its group files name /.../a/triton/...), copied to b: `check`
    must not say warm there; `run` there repairs and is then warm; a stays warm."""
    pytest.importorskip("triton")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [{"numHeads": 4, "numKvHeads": 2, "headSize": 64}]}))
    a, b = tmp_path / "a", tmp_path / "b"
    assert warmer("run", plan, a).returncode == 0
    assert any(a.rglob("__grp__*.json")), "compile-only wrote no Triton group file"
    assert warmer("check", plan, a).returncode == 0
    shutil.copytree(a, b, symlinks=True)
    out = warmer("check", plan, b)
    assert out.returncode == 1 and "another path" in out.stdout, out.stdout + out.stderr
    out = warmer("run", plan, b)
    assert out.returncode == 0 and json.loads(out.stdout)["triton"]["compiled"] == 1, out.stderr[-800:]
    assert warmer("check", plan, b).returncode == 0
    assert warmer("check", plan, a).returncode == 0


def test_run_with_a_poisoned_manifest_deletes_nothing_outside_and_repairs(tmp_path, victim):
    """End to end through `run`: entries '../victim' and an absolute path in the manifest."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [{"numHeads": 4, "numKvHeads": 2, "headSize": 64, "sinks": True}]}))
    cache = tmp_path / "cache"
    first = warmer("run", plan, cache)
    key = json.loads(first.stdout)["cacheKey"]
    layout = CacheLayout(cache)
    doc = json.loads(layout.manifest_path(key).read_text())
    doc["files"] = [{"path": "../victim", "sha256": "0" * 64, "size": 1},
                    {"path": str(victim / "precious"), "sha256": "0" * 64, "size": 1}]
    layout.manifest_path(key).write_text(json.dumps(doc))
    out = warmer("check", plan, cache)
    assert out.returncode == 1 and "damaged" in out.stdout
    out = warmer("run", plan, cache)
    assert out.returncode == 0, out.stderr
    assert_victim_intact(victim)
    assert warmer("check", plan, cache).returncode == 0
