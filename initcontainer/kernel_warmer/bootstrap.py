"""The bootstrap init container's program: copy the warmer into the shared emptyDir.

Runs in the operator's image (which holds both the ``kernel_warmer`` package and the
serving ``sitecustomize``) before the warmer, and lays them out for the containers that
run in the *serving* image:

    <dest>/python/kernel_warmer/   the warmer package   (the warmer's PYTHONPATH)
    <dest>/site/sitecustomize.py   the serving hook     (the server's PYTHONPATH)

Stdlib only; copies into a temp folder and renames, so a half-copied package is never
importable. Usage: ``python3 -m kernel_warmer.bootstrap --dest /kernel-warmup``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

PACKAGE_DIR = Path(__file__).resolve().parent
SITE_ENV = "KERNEL_WARMUP_SITE_SRC"
# Where the serving sitecustomize lives: beside the package in the source tree and in the
# image (the Dockerfile copies initcontainer/ to /opt/kernel-warmup).
SITE_CANDIDATES = (PACKAGE_DIR.parent / "serving_site", Path("/opt/kernel-warmup/serving_site"))
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
# Modules of the package that only GPU tests and benches use, kept out of the copy that
# reaches every serving Pod (relative to the package).
NOT_FOR_PODS = ("triton/probe.py",)


def _ignore_for(root: Path):
    def ignore(folder: str, entries: list[str]) -> set[str]:
        rel = Path(folder).resolve().relative_to(root.resolve())
        skipped = {e for e in entries if (rel / e).as_posix() in NOT_FOR_PODS}
        return set(_IGNORE(folder, entries)) | skipped
    return ignore


class BootstrapError(RuntimeError):
    pass


def find_site_src(explicit: Optional[str]) -> Path:
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get(SITE_ENV):
        candidates.append(Path(os.environ[SITE_ENV]))
    candidates.extend(SITE_CANDIDATES)
    for c in candidates:
        if (c / "sitecustomize.py").is_file():
            return c
    raise BootstrapError(f"no serving_site/sitecustomize.py found (looked in {', '.join(map(str, candidates))}); "
                         f"pass --site-src or set {SITE_ENV}")


def _replace_dir(src: Path, target: Path, ignore=_IGNORE) -> None:
    """Copy ``src`` to ``target`` via a sibling temp folder and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staged = tmp / target.name
        shutil.copytree(src, staged, ignore=ignore)
        for p in [staged, *staged.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)  # readable by any serving user
        if target.exists():
            old = tmp / "old"
            target.rename(old)
        staged.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bootstrap(dest: Path, site_src: Path, package_src: Path = PACKAGE_DIR) -> list[Path]:
    if not (package_src / "__init__.py").is_file():
        raise BootstrapError(f"{package_src} is not the kernel_warmer package")
    _replace_dir(package_src, dest / "python" / "kernel_warmer", _ignore_for(package_src))
    _replace_dir(site_src, dest / "site")
    return [dest / "python" / "kernel_warmer", dest / "site"]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="kernel_warmer.bootstrap", description=__doc__.splitlines()[0])
    ap.add_argument("--dest", required=True, help="the shared emptyDir's mount path")
    ap.add_argument("--site-src", help=f"folder with the serving sitecustomize.py (default: ${SITE_ENV} or beside the package)")
    args = ap.parse_args(argv)
    try:
        written = bootstrap(Path(args.dest), find_site_src(args.site_src))
    except (BootstrapError, OSError) as exc:
        print(f"kernel-warmup bootstrap: {exc}", file=sys.stderr)
        return 1
    for p in written:
        print(f"kernel-warmup bootstrap: wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
