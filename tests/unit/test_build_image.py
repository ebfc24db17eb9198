"""scripts/build_image.py: the image config comes from the Dockerfile, the in-image checks report each result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import build_image  # noqa: E402


def test_the_config_is_the_dockerfiles_last_stage():
    cfg = build_image.dockerfile_config()
    assert cfg.user == "65532:65532"
    assert cfg.cmd == ("python3", "-m", "warmup_operator")
    assert cfg.ports == ("8081/tcp", "9090/tcp")
    path = next(e for e in cfg.env if e.startswith("PATH="))
    assert path.startswith("PATH=/opt/kernel-warmup/venv/bin:")  # where image/install.sh puts the venv
    assert "HOME=/tmp" in cfg.env


def test_only_the_last_stage_counts_and_a_missing_user_is_named():
    text = 'FROM a AS build\nUSER 1\nENV X=1\nFROM b\nENV Y=2\nCMD ["run"]\n'
    with pytest.raises(build_image.ImageError, match="USER"):
        build_image.image_config(text)
    cfg = build_image.image_config(text + "USER 65532:65532\nEXPOSE 80 53/udp\n")
    assert cfg.env == ("Y=2",) and cfg.user == "65532:65532" and cfg.ports == ("80/tcp", "53/udp")


def test_the_dockerfile_and_make_image_run_the_same_install_script():
    docker = (ROOT / "Dockerfile").read_text()
    assert "RUN sh /src/image/install.sh /src" in docker
    for rel in build_image.SOURCES:  # what the Dockerfile copies into /src is what make image copies
        assert f" {rel}" in docker.replace("COPY ", " "), rel


def test_each_check_reports_its_own_exit_code_and_output(monkeypatch):
    monkeypatch.setattr(build_image, "CHECKS", (
        ("a", "echo hello", None), ("b", "echo oops; exit 3", None), ("c", "printf 'x\\ny\\n'", None)))
    out = subprocess.run(["sh", "-c", build_image.checks_script()], capture_output=True, text=True).stdout
    assert build_image.parse_checks(out) == {0: (0, "hello"), 1: (3, "oops"), 2: (0, "x\ny")}


def test_a_check_that_never_ran_is_absent():
    assert build_image.parse_checks(f"{build_image.MARK} 0\npartial\n") == {}
