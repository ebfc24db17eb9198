"""The bootstrap copies a working warmer package and the serving sitecustomize."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bootstrap(dest: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT / "initcontainer")
    return subprocess.run([sys.executable, "-m", "kernel_warmer.bootstrap", "--dest", str(dest), *extra],
                          env=env, capture_output=True, text=True, timeout=60)


def test_bootstrap_lays_out_package_and_site(tmp_path):
    dest = tmp_path / "kernel-warmup"
    r = run_bootstrap(dest)
    assert r.returncode == 0, r.stderr
    assert (dest / "python/kernel_warmer/spec.py").is_file()
    assert (dest / "site/sitecustomize.py").is_file()
    assert not list(dest.rglob("__pycache__"))
    # The copied package is importable on its own (as in the serving image).
    probe = subprocess.run([sys.executable, "-c", "import kernel_warmer.spec, sys; print(kernel_warmer.spec.__file__)"],
                           env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(dest / "python")},
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(str(dest / "python"))
    # Idempotent: a second run (container restart) replaces the copy cleanly.
    assert run_bootstrap(dest).returncode == 0
    assert sorted(p.name for p in dest.iterdir()) == ["python", "site"]


def test_bootstrap_names_a_missing_site_folder(tmp_path):
    r = run_bootstrap(tmp_path / "d", "--site-src", str(tmp_path / "nowhere"))
    # An explicit folder without sitecustomize.py falls through to the defaults, which exist here.
    assert r.returncode == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer"))
    code = ("import kernel_warmer.bootstrap as b, pathlib; b.SITE_CANDIDATES = ();"
            "import sys; sys.exit(b.main(['--dest', sys.argv[1], '--site-src', sys.argv[2]]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "e"), str(tmp_path / "nowhere")],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "sitecustomize.py" in r.stderr and "--site-src" in r.stderr


# Test- and dev-only code stays out of what reaches every serving pod.
DEV_ONLY = ("reference", "localrun", "operator_process", "conftest", "support", "ssa")


def test_bootstrap_copies_no_test_or_dev_module(tmp_path):
    dest = tmp_path / "kernel-warmup"
    assert run_bootstrap(dest).returncode == 0
    copied = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert "python/kernel_warmer/runner.py" in copied and "site/sitecustomize.py" in copied
    for path in copied:
        stem = Path(path).stem
        assert not stem.startswith("test_") and not any(d in Path(path).parts or stem.startswith(d) for d in DEV_ONLY), path


def test_the_warmer_subpackages_named_triton_and_flashinfer_shadow_nothing(tmp_path):
    """kernel_warmer.triton / kernel_warmer.flashinfer sit under kernel_warmer/, never on
    sys.path themselves: ``import triton`` is the real one, in the source tree and in a pod."""
    pytest.importorskip("triton")
    dest = tmp_path / "kernel-warmup"
    assert run_bootstrap(dest).returncode == 0
    code = ("import kernel_warmer.triton.compile, kernel_warmer.flashinfer.tune, triton, triton.language;"
            "print(triton.__file__)")
    for pythonpath in (str(ROOT / "initcontainer"), str(dest / "python")):
        r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=os.pathsep.join([pythonpath, os.environ.get("PYTHONPATH", "")])),
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "kernel_warmer" not in r.stdout, r.stdout


def test_the_copy_is_the_package_less_what_only_tests_and_benches_use(tmp_path):
    """Issue 24 item 3: the compile-counting probe (GPU tests, benches) stays out of Pods;
    every other module of the package is copied."""
    from kernel_warmer import bootstrap

    dest = tmp_path / "kernel-warmup"
    assert run_bootstrap(dest).returncode == 0
    copied = {p.relative_to(dest / "python/kernel_warmer").as_posix()
              for p in (dest / "python/kernel_warmer").rglob("*") if p.is_file()}
    source = {p.relative_to(bootstrap.PACKAGE_DIR).as_posix() for p in bootstrap.PACKAGE_DIR.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")}
    assert copied == source - set(bootstrap.NOT_FOR_PODS)
    assert "triton/probe.py" not in copied and "triton/compile.py" in copied
