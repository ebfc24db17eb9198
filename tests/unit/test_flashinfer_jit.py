"""FlashInfer JIT builds on the cache volume: concurrent builders, the deadline, the modules
in the manifest, prebuilt kernels.

FlashInfer itself does not import here (its apache-tvm-ffi wheel is for Python 3.12, the
dev venv runs 3.11), so the builder is a stand-in child that follows FlashInfer 0.6.18's
``JitSpec.build_and_load`` protocol to the letter: ``filelock.FileLock`` on
``cached_ops/tmp/<name>.lock``, a second look under the lock, then objects and a ``.so``
written in pieces (a linker does not write atomically). What is tested is the warmer's
side: ``build_modules`` (children, deadline, heartbeat), ``discard_partial`` (under the
same lock) and the manifest listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kernel_warmer.cache.manifest import file_entries, repair, verify, write_manifest
from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.flashinfer import jit
from kernel_warmer.flashinfer.phase import jit_files, prepare_jit
from kernel_warmer.plan.flashinfer import AutoTuneOp

pytest.importorskip("filelock")  # FlashInfer's own lock package

NAME = "fused_moe_90"
SO_BYTES = b"\x7fELF" + bytes(range(256)) * 64  # 16 KiB, written in 16 pieces

FAKE_BUILD = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from filelock import FileLock
    cached_ops, name, log, hang = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "hang"
    so = cached_ops / name / f"{name}.so"
    (cached_ops / "tmp").mkdir(parents=True, exist_ok=True)
    with FileLock(str(cached_ops / "tmp" / f"{name}.lock"), thread_local=False):
        if so.exists() and not hang:          # built while we waited: ninja has nothing to do
            with open(log, "a") as f: f.write("noop\\n")
            sys.exit(0)
        so.parent.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            (so.parent / f"part{i}.cuda.o").write_bytes(b"o" * 100)
            time.sleep(0.05)
        data = bytes.fromhex(sys.argv[5])
        with open(so, "wb") as f:             # a linker writing the library in pieces
            for i in range(0, len(data), len(data) // 16):
                f.write(data[i:i + len(data) // 16]); f.flush(); time.sleep(0.02)
                if hang and i > len(data) // 2:
                    time.sleep(3600)          # stuck mid-link: the deadline must stop it
        with open(log, "a") as f: f.write("built\\n")
''')


@pytest.fixture()
def base(tmp_path):
    """A cache volume's JIT workspace with FlashInfer's folder layout."""
    root = tmp_path / "cache"
    ops = root / "flashinfer-jit" / ".cache" / "flashinfer" / "0.6.18" / "90a" / "cached_ops"
    ops.mkdir(parents=True)
    (tmp_path / "fake_build.py").write_text(FAKE_BUILD)
    return root / "flashinfer-jit"


def cached_ops(base: Path) -> Path:
    return jit.cached_ops_dirs(base)[0]


def module(base: Path, tmp: Path, hang: bool = False, name: str = NAME) -> jit.JitModule:
    argv = [sys.executable, str(tmp / "fake_build.py"), str(cached_ops(base)), name, str(tmp / "builds.log"),
            "hang" if hang else "ok", SO_BYTES.hex()]
    return jit.JitModule(name, argv)


BUILD_IN_CHILD = """
import json, sys
from pathlib import Path
from kernel_warmer.flashinfer import jit
mod = jit.JitModule(sys.argv[1], json.loads(sys.argv[2]))
print(jit.build_modules([mod], Path(sys.argv[3]), 60.0, lambda s: None))
"""


def test_two_warmers_building_one_module_at_once_leave_one_complete_library(base, tmp_path):
    mod = module(base, tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs = [subprocess.Popen([sys.executable, "-c", BUILD_IN_CHILD, mod.name, json.dumps(mod.argv), str(base)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sorted((tmp_path / "builds.log").read_text().split()) == ["built", "noop"]  # built once
    (so,) = jit.module_libraries(base)
    assert so.name == f"{NAME}.so" and so.read_bytes() == SO_BYTES  # whole, not interleaved


def test_a_build_past_the_deadline_fails_naming_the_module_and_leaves_no_library(base, tmp_path):
    lines: list[str] = []
    start = time.monotonic()
    with pytest.raises(jit.JitTimeout) as err:
        jit.build_modules([module(base, tmp_path, hang=True)], base, 1.5, lines.append, interval_s=0.2)
    assert time.monotonic() - start < 1.5 + jit.STOP_GRACE_S
    assert f"module {NAME} exceeded the warmer's timeout" in str(err.value) and "3 object file(s)" in str(err.value)
    assert "library removed" in str(err.value)
    assert not (cached_ops(base) / NAME / f"{NAME}.so").exists() and jit.module_libraries(base) == []
    assert any(line.startswith(f"heartbeat: flashinfer jit {NAME} ") and "object file(s)" in line for line in lines)
    # the stopped builder released FlashInfer's lock: the next build goes through
    jit.build_modules([module(base, tmp_path)], base, 30.0, lines.append)
    assert jit.module_libraries(base)[0].read_bytes() == SO_BYTES


def test_a_failed_build_names_the_module_and_shows_its_output(base, tmp_path):
    bad = jit.JitModule("fused_moe_90", [sys.executable, "-c", "print('nvcc fatal: out of memory'); raise SystemExit(3)"])
    with pytest.raises(jit.JitBuildError, match=r"module fused_moe_90 failed \(exit 3\):\nnvcc fatal: out of memory"):
        jit.build_modules([bad], base, 30.0, lambda s: None)


def test_modules_are_listed_checked_and_a_damaged_one_reads_cold(base, tmp_path):
    jit.build_modules([module(base, tmp_path)], base, 30.0, lambda s: None)
    (cached_ops(base) / "other").mkdir()
    (cached_ops(base) / "other" / "helper.so").write_bytes(b"not a module library")  # not <name>/<name>.so
    layout = CacheLayout(base.parent)
    files = jit_files(base, layout, lambda s: None)
    assert [Path(f["path"]).name for f in files] == [f"{NAME}.so"]
    write_manifest(layout, "k", {}, {}, file_entries(layout, [f["path"] for f in files]), {})
    assert verify(layout, "k").warm
    so = Path(files[0]["path"])
    so.write_bytes(SO_BYTES[:100])  # truncated
    verdict = verify(layout, "k")
    assert not verdict.warm and verdict.bad_files == [so.relative_to(layout.root).as_posix()]
    repair(layout, "k", verdict.bad_files)  # the library goes (ninja relinks), the objects stay
    assert not so.exists() and len(list(so.parent.glob("*.o"))) == 3
    assert not verify(layout, "k").warm


def test_a_workspace_outside_the_volume_is_said_not_listed(base, tmp_path):
    jit.build_modules([module(base, tmp_path)], base, 30.0, lambda s: None)
    said: list[str] = []
    assert jit_files(base, CacheLayout(tmp_path / "elsewhere"), said.append) == []
    assert "outside the cache volume" in said[0]


def test_built_since_names_new_and_rebuilt_modules(base, tmp_path):
    before = jit.library_state(base)
    jit.build_modules([module(base, tmp_path)], base, 30.0, lambda s: None)
    assert jit.built_since(before, base) == [NAME]
    assert jit.built_since(jit.library_state(base), base) == []


def test_workspace_defaults_to_the_volume_and_keeps_the_operators_value(tmp_path):
    env: dict[str, str] = {}
    assert jit.ensure_workspace(tmp_path / "jit", env) == tmp_path / "jit" and env[jit.ENV_BASE] == str(tmp_path / "jit")
    env = {jit.ENV_BASE: "/cache/flashinfer-jit"}
    assert jit.ensure_workspace(tmp_path / "jit", env) == Path("/cache/flashinfer-jit")


MOE = AutoTuneOp("cutlass_fused_moe", 768, 2048, 64, "experts", mode="bf16", tp_size=2, local_experts=128)


def test_prebuilt_kernels_mean_nothing_is_built(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "flashinfer_jit_cache"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(jit, "build_all", lambda *a, **k: pytest.fail("built despite prebuilt kernels"))
    said: list[str] = []
    report = prepare_jit([MOE], 90, tmp_path / "jit", 60.0, said.append)
    assert report.prebuilt.startswith("flashinfer-jit-cache") and report.modules_built == []
    assert "builds no module ahead of tuning" in said[0] and report.to_dict()["seconds"] == 0


def test_prepare_jit_sizes_the_build_and_builds_the_moe_module(tmp_path, monkeypatch):
    monkeypatch.delenv("MAX_JOBS", raising=False)
    built: list[str] = []
    monkeypatch.setattr(jit, "build_all", lambda mods, *a, **k: (built.extend(m.name for m in mods), (12.5, 0))[1])
    said: list[str] = []
    report = prepare_jit([MOE], 90, tmp_path / "jit", 60.0, said.append)
    assert built == ["fused_moe_90"] and report.seconds == 12.5
    assert os.environ["MAX_JOBS"].isdigit() and f"MAX_JOBS={os.environ['MAX_JOBS']}" in said[0]
    assert jit.modules_for([AutoTuneOp("bf16_gemm", 8, 8, 8, "o")], 90) == []


def test_manifest_roots_are_the_layouts_folders():
    from kernel_warmer.cache.untrusted import ENTRY_ROOTS

    assert set(ENTRY_ROOTS) == {CacheLayout.TRITON, CacheLayout.FLASHINFER, CacheLayout.FLASHINFER_JIT,
                                *CacheLayout.SERVER_DIRS}
