#!/usr/bin/env python3
"""Create the project's virtualenv fast, on a fresh clone and in CI.

The heavy dependencies (torch with its CUDA libraries, triton, kopf, ...) are installed
once per dependency set into ``$KERNEL_WARMUP_CACHE/pydeps/<key>/`` (outside the clone,
reused by CI and later runs; key = hash of the pinned list + Python version). Each
clone's ``.venv`` is a plain venv that sees that folder through a ``.pth`` file and holds
only an editable install of this project. pip's own HTTP cache is not relied on: through
this machine's registry mirror it stores nothing.

    python3 scripts/setup_env.py [--venv .venv] [--extra dev]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "devcluster"))
import heartbeat  # noqa: E402  (stdlib-only helper shared with devcluster.py)


def cache_root() -> Path:
    return Path(os.environ.get("KERNEL_WARMUP_CACHE", Path.home() / ".cache" / "kernel-warmup"))


def requirements(extra: str) -> list[str]:
    """The extra's requirements with self-references (kernel-warmup[x]) expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = [extra], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in extras:
            sys.exit(f"setup_env: pyproject.toml has no optional-dependencies.{name}")
        seen.add(name)
        for req in extras[name]:
            if req.startswith(project["name"] + "["):
                todo.extend(x.strip() for x in req.split("[", 1)[1].rstrip("]").split(","))
            else:
                out.append(req)
    return sorted(set(out))


def say(msg: str) -> None:
    print(f"setup_env: {msg}", flush=True)


def install_isolated(reqs: list[str], target: Path) -> None:
    """pip install ``reqs`` into the folder ``target``, run by the pip of a fresh venv that
    sees no other packages. pip --target checks the result for conflicts against the
    environment of the interpreter that runs it: run by the system's python3, it reports
    every system package whose pins disagree with ours (awscli vs docutils, ...), which has
    nothing to do with this project. An empty venv has nothing to disagree with."""
    with tempfile.TemporaryDirectory(prefix="kw-pip-") as tmp:
        installer = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(installer)], check=True)
        # PYTHONPATH would put other packages back in front of that pip's conflict check.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        heartbeat.run(
            [str(installer / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "--target", str(target), *reqs],
            f"Installing {len(reqs)} requirements with pip", env=env, say=say,
        )


def ensure_deps(reqs: list[str]) -> Path:
    key = hashlib.sha256("\n".join([sys.version.split()[0], *reqs]).encode()).hexdigest()[:16]
    target = cache_root() / "pydeps" / key
    if (target / ".complete").is_file():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"first run: {len(reqs)} pinned requirements (torch, triton, kopf, ...; ~5 GB) go into {target}; "
        "later runs and other clones reuse them")
    install_isolated(reqs, tmp)
    (tmp / ".complete").write_text("\n".join(reqs) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)  # appears complete or not at all
    return target


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv")
    ap.add_argument("--extra", default="dev")
    args = ap.parse_args()
    if sys.version_info < (3, 11):
        sys.exit("setup_env: needs Python 3.11+ (tomllib); the warmer package itself runs on 3.10+")
    deps = ensure_deps(requirements(args.extra))
    venv = args.venv.resolve()
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    (Path(purelib) / "kernel_warmup_deps.pth").write_text(f"{deps}\n")
    heartbeat.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "-e", str(ROOT)],
        f"Installing this project (editable, no dependencies) into {venv}", say=say,
    )
    say(f"{venv} ready (deps from {deps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
