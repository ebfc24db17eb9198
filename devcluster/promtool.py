"""promtool (Prometheus's checker) built from the Go module proxy, cached like the control plane.

`go install -tags remove_all_sd github.com/prometheus/prometheus/cmd/promtool@VERSION`
into ``$KERNEL_WARMUP_CACHE/devcluster/promtool-VERSION/``: the build tag leaves out the
cloud service-discovery plugins, which promtool's `check metrics` and `check rules` never
use. Measured on the 2-core development machine: about 6 minutes the first time (module
downloads included), nothing afterwards. A `promtool` on PATH (Debian's `prometheus`
package) is used when there is no cached build and Go cannot make one.

Stdlib only, like devcluster.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import heartbeat

MODULE = "github.com/prometheus/prometheus/cmd/promtool"
VERSION = "v0.316.0"  # Prometheus 3.16's Go module version


def cache_root() -> Path:
    return Path(os.environ.get("KERNEL_WARMUP_CACHE", Path.home() / ".cache" / "kernel-warmup"))


def cached() -> Path:
    return cache_root() / "devcluster" / f"promtool-{VERSION}" / "promtool"


def find() -> Optional[Path]:
    """The cached build, else one on PATH, else None (nothing is built)."""
    if cached().is_file():
        return cached()
    on_path = shutil.which("promtool")
    return Path(on_path) if on_path else None


def build(say: Callable[[str], None]) -> Optional[Path]:
    """The cached promtool, built first if needed; None (and why, through ``say``) when it
    cannot be built here: then the tests that use it say they ran without it."""
    target = cached()
    if target.is_file():
        return target
    if shutil.which("go") is None:
        say("promtool: no `go` on PATH to build it; the metrics/rules tests use a promtool on PATH or say why not")
        return find()
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="promtool-", dir=target.parent.parent))
    env = dict(os.environ, GOBIN=str(tmp), GOFLAGS="-trimpath")
    cmd = ["go", "install", "-tags", "remove_all_sd", f"{MODULE}@{VERSION}"]
    say(f"first run: promtool {VERSION} is built from the Go module proxy into {target.parent} "
        "(about 6 min on 2 cores, once)")
    try:
        heartbeat.run(cmd, f"Building promtool {VERSION} with go install", env=env, say=say)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        say(f"promtool: go install failed (exit {exc.returncode}); the tests that lint with it will say so")
        return find()
    if target.parent.exists():
        shutil.rmtree(target.parent)
    os.replace(tmp, target.parent)  # the folder appears complete or not at all
    return target
