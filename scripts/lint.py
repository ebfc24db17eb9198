"""The Python part of `make lint` (and the first step of `make test`): ruff, then the layer
contracts of .importlinter (import-linter). Exits non-zero on the first that fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def main() -> int:
    path = [str(ROOT / "operator"), str(ROOT / "initcontainer"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path).rstrip(os.pathsep))
    for cmd in ([sys.executable, "-m", "ruff", "check", "--no-cache", "."],
                [sys.executable, "-c", LINT_IMPORTS, "--no-cache"]):
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
