"""The layer contracts of .importlinter hold, and a deliberate violation breaks them.

Each case copies the two packages and the contracts into a temporary folder, adds one
forbidden import, and runs import-linter there: it must fail and name the contract."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    path = [str(tree / "operator"), str(tree / "initcontainer"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path).rstrip(os.pathsep))
    return subprocess.run([sys.executable, "-c", LINT_IMPORTS, "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("operator", "initcontainer"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=ignore)
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path):
    out = lint_imports(tree)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("operator/warmup_operator/core/decide.py", "import kopf", "warmup_operator.core imports none of kopf"),
    ("operator/warmup_operator/reconcile.py", "import kubernetes", "only warmup_operator.kube imports kubernetes"),
    ("initcontainer/kernel_warmer/runner.py", "import warmup_operator.core.names",
     "kernel_warmer never imports warmup_operator"),
    ("operator/warmup_operator/core/inject.py", "import kernel_warmer.plan.model",
     "the operator imports only the warmer's contract"),
    ("initcontainer/kernel_warmer/heads.py", "import torch", "kernel_warmer.plan and the contract modules import no"),
    ("initcontainer/kernel_warmer/spec.py", "import kernel_warmer.runner", "the warmer's contract modules import only"),
    ("operator/warmup_operator/kube.py", "import warmup_operator.reconcile", "the operator's edges are layered"),
    ("operator/warmup_operator/core/kinds.py", "import warmup_operator.core.decide", "the operator's core is layered"),
    ("initcontainer/kernel_warmer/cache/manifest.py", "import kernel_warmer.triton.compile", "the warmer's floors"),
])
def test_a_forbidden_import_breaks_its_contract(tree: Path, module: str, line: str, contract: str):
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # deliberate violation\n")
    out = lint_imports(tree)
    assert out.returncode != 0, out.stdout
    summary = " ".join(out.stdout.split())  # import-linter wraps long contract names
    assert re.search(re.escape(contract) + r"(?:(?!KEPT).)*? BROKEN", summary), out.stdout
