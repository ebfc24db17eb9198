"""Manifest and lock logic: warm only when every checksum verifies; damage reads as cold and
is removed so the next run rebuilds it."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from kernel_warmer.cache.envkey import compute_env_key, gpu_models, normalize_target
from kernel_warmer.cache.manifest import (
    file_entries,
    manifest_key,
    repair,
    verify,
    write_manifest,
)
from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.files import file_lock


def make_cache(tmp_path: Path) -> tuple[CacheLayout, str, list[Path]]:
    layout = CacheLayout(tmp_path)
    layout.create()
    files = []
    for h in ("AAAA", "BBBB"):
        d = layout.triton_dir / h
        d.mkdir()
        for ext in ("cubin", "json"):
            p = d / f"_kernel.{ext}"
            p.write_bytes(f"{h}-{ext}".encode() * 100)
            files.append(p)
    key = manifest_key({"triton": ["v1"]}, {"target": "sm_90"})
    write_manifest(layout, key, {"triton": ["v1"]}, {"target": "sm_90"}, file_entries(layout, files), {})
    return layout, key, files


def test_warm_after_write(tmp_path):
    layout, key, _ = make_cache(tmp_path)
    v = verify(layout, key)
    assert v.warm and "4 file(s)" in v.reason


def test_key_depends_on_plan_and_env():
    a = manifest_key({"p": 1}, {"e": 1})
    assert a != manifest_key({"p": 2}, {"e": 1}) and a != manifest_key({"p": 1}, {"e": 2})
    assert a == manifest_key({"p": 1}, {"e": 1})


def test_missing_manifest_is_cold(tmp_path):
    layout = CacheLayout(tmp_path)
    assert not verify(layout, "nope").warm


def test_corrupted_file_is_cold_and_repair_removes_its_entry(tmp_path):
    layout, key, files = make_cache(tmp_path)
    files[0].write_bytes(b"garbage of the same length?"[:10])
    v = verify(layout, key)
    assert not v.warm and v.bad_files == ["triton/AAAA/_kernel.cubin"]
    removed = repair(layout, key, v.bad_files)
    assert "triton/AAAA" in removed and not (layout.triton_dir / "AAAA").exists()
    assert (layout.triton_dir / "BBBB").exists()  # the healthy entry stays
    assert not layout.manifest_path(key).exists()


def test_same_size_bit_flip_is_cold(tmp_path):
    layout, key, files = make_cache(tmp_path)
    data = bytearray(files[1].read_bytes())
    data[5] ^= 1
    files[1].write_bytes(bytes(data))
    assert not verify(layout, key).warm


def test_truncated_or_garbage_manifest_is_cold_not_a_crash(tmp_path):
    layout, key, _ = make_cache(tmp_path)
    path = layout.manifest_path(key)
    path.write_bytes(path.read_bytes()[:40])
    assert not verify(layout, key).warm
    path.write_text('{"key": "other", "files": []}')
    assert not verify(layout, key).warm
    path.write_text('{"key": "%s", "files": [{"path": 1}]}' % key)
    assert not verify(layout, key).warm


def test_deleted_file_is_cold(tmp_path):
    layout, key, files = make_cache(tmp_path)
    files[3].unlink()
    assert not verify(layout, key).warm


def _hold(lock: str, marks: str, tag: str) -> None:
    with file_lock(Path(lock)):
        with open(marks, "a") as f:
            f.write(f"{tag}+\n")
        time.sleep(0.3)
        with open(marks, "a") as f:
            f.write(f"{tag}-\n")


def test_lock_serialises_processes(tmp_path):
    marks = tmp_path / "marks"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hold, args=(str(tmp_path / ".lock"), str(marks), t)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    lines = marks.read_text().split()
    assert len(lines) == 4
    assert lines[0][0] == lines[1][0] and lines[2][0] == lines[3][0]  # never interleaved


def test_env_key_without_heavy_imports(tmp_path, monkeypatch):
    k1 = compute_env_key("sm_90")
    assert k1.target == "sm_90" and k1.packages["triton"]
    assert compute_env_key("sm_90").digest() == k1.digest()
    assert compute_env_key("sm_100").digest() != k1.digest()
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "0")
    assert compute_env_key("sm_90").digest() != k1.digest()
    assert normalize_target("sm90a") == "sm_90" and normalize_target("100") == "sm_100"


def test_gpu_models_from_proc(tmp_path):
    for i, name in enumerate(["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"]):
        d = tmp_path / f"0000:0{i}:00.0"
        d.mkdir()
        (d / "information").write_text(f"Model: \t\t {name}\nIRQ:   1\n")
    assert gpu_models(tmp_path) == ["NVIDIA H100 80GB HBM3"]
    assert gpu_models(tmp_path / "absent") == []
