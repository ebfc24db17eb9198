"""Run the operator as a child process against a kubeconfig (tests, bench, demo).

The same entry point as the container (``python -m warmup_operator``), with free local
ports for the liveness and metrics endpoints and the log kept in a file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, *, namespaces: tuple[str, ...] = (),
                 resync_seconds: float = 2.0, bootstrap_image: Optional[str] = None, python: str = sys.executable,
                 extra_env: Optional[dict] = None, extra_args: tuple[str, ...] = (), kubeconfig_env: bool = True):
        self.kubeconfig = Path(kubeconfig)
        self.log_path = Path(log_path)
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.namespaces = namespaces
        self.resync_seconds = resync_seconds
        self.bootstrap_image = bootstrap_image
        self.python = python
        self.extra_env = extra_env or {}
        self.extra_args = tuple(extra_args)
        self.kubeconfig_env = kubeconfig_env  # False: only the --kubeconfig flag names it
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout_s: float = 60.0) -> "OperatorProcess":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), str(ROOT / "initcontainer"),
                                             env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["KUBECONFIG"] = str(self.kubeconfig)
        if not self.kubeconfig_env:
            del env["KUBECONFIG"]
        env["KERNEL_WARMUP_RESYNC_SECONDS"] = str(self.resync_seconds)
        env.update(self.extra_env)
        argv = [self.python, "-m", "warmup_operator", "--kubeconfig", str(self.kubeconfig),
                "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz",
                "--metrics-port", str(self.metrics_port), "--log-format", "json"]
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        if self.bootstrap_image:
            argv += ["--bootstrap-image", self.bootstrap_image]
        argv += list(self.extra_args)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.3)
        raise RuntimeError(f"operator not healthy after {timeout_s}s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def peak_rss_mib(self) -> float:
        """VmHWM of the operator process (Linux)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "OperatorProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
