"""scripts/setup_env.py: the dependency install reports nothing about packages outside it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import setup_env  # noqa: E402

CONFLICT = "dependency conflicts"


def _wheel(folder: Path, name: str, version: str, requires: str = "") -> Path:
    """A minimal pure-Python wheel, written by hand (no build backend, no network)."""
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires:
        meta += f"Requires-Dist: {requires}\n"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": meta,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{p},,\n" for p in [*files, f"{info}/RECORD"])
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in files.items():
            zf.writestr(member, text)
    return path


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A "system" package folder on PYTHONPATH holding hostpin, which pins leafpkg<1 (as
    the machine's awscli pins docutils), and an index holding leafpkg 1.0 only."""
    wheels, site = tmp_path / "wheels", tmp_path / "host-site"
    wheels.mkdir()
    with zipfile.ZipFile(_wheel(wheels, "hostpin", "1.0", "leafpkg<1")) as zf:
        zf.extractall(site)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    _wheel(wheels, "leafpkg", "1.0")
    return tmp_path


def test_pip_target_from_the_host_interpreter_reports_host_conflicts(host: Path) -> None:
    """The cause, shown: pip --target checks conflicts against its interpreter's packages."""
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                        "--target", str(host / "t"), "leafpkg==1.0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert CONFLICT in r.stdout + r.stderr and "hostpin" in r.stdout + r.stderr


def test_install_isolated_reports_nothing_about_host_packages(host: Path, capfd: pytest.CaptureFixture[str]) -> None:
    setup_env.install_isolated(["leafpkg==1.0"], host / "t")
    out = capfd.readouterr()
    assert (host / "t" / "leafpkg-1.0.dist-info").is_dir()
    assert CONFLICT not in out.out + out.err and "hostpin" not in out.out + out.err
    assert "Installing 1 requirements with pip: done in" in out.out
