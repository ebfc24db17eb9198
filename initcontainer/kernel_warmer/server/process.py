"""One vLLM server started, made to build what it builds lazily, and stopped (stdlib only).

``start`` runs the argv in its own process group with its output read line by line (the
last lines kept for an error, vLLM's start-up phases timed from its own log lines);
``wait_ready`` polls ``/health`` until it answers 200, the process dies or the deadline
passes, saying vLLM's phase every 15 s; ``exercise`` sends one short request (the first
request builds sampling kernels that start-up does not); ``stop`` asks the server to exit
(SIGTERM, as the kubelet does), then kills what is left of its group.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

Log = Callable[[str], None]
TAIL_LINES = 60
PROGRESS_S = 15.0
STOP_GRACE_S = 30.0

# vLLM's own log lines (0.26: v1/worker/gpu/model_runner.py:305, compilation/monitor.py:20,53,
# compilation/backends.py:292,393, v1/worker/gpu/model_runner.py:747, v1/engine/core.py:329;
# 0.33 keeps them): (phase, pattern); several lines of one phase add up (compile ranges).
PHASE_LINES: tuple[tuple[str, str], ...] = (
    ("model_load", r"Model loading took [\d.]+ GiB (?:memory )?and (?P<s>[\d.]+) seconds"),
    ("compile", r"torch\.compile (?:and initial profiling/warmup run together )?(?:takes|took) (?P<s>[\d.]+) s in total"),
    ("compile_cache_load", r"Directly load the compiled graph\(s\) for .* took (?P<s>[\d.]+) s"),
    ("cuda_graphs", r"Graph capturing finished in (?P<s>[\d.]+) secs"),
    ("init_engine", r"init engine \(profile, create kv cache, warmup model\) took (?P<s>[\d.]+) s"),
)
# Where vLLM is, by the last of these seen (the progress line every 15 s). The V2 model
# runner's kernel warm-up logs nothing of its own: it runs after the graph capture line.
MILESTONES: tuple[tuple[str, str], ...] = (
    ("loading the model", r"Starting to load model|Loading weights"),
    ("compiling (torch.compile)", r"Using cache directory: .* for vLLM's torch\.compile|Dynamo bytecode transform|"
                                  r"Compiling a graph|Directly load AOT compilation"),
    ("profiling and warming kernels", r"Initial profiling/warmup run|Available KV cache memory|GPU KV cache size"),
    ("tuning FlashInfer", r"Using FlashInfer autotune cache file"),
    ("capturing CUDA graphs", r"Capturing CUDA graph"),
    ("warming vLLM's kernels", r"Graph capturing finished"),
    ("starting the API server", r"init engine \(profile|Starting vLLM (?:API )?server|Application startup complete"),
)
# Lines that say an artefact came from a cache (the AOT compile cache, the backend cache,
# FlashInfer tuning loaded from a file) and lines that say one was made now
LOADED_FROM_CACHE = re.compile(r"Directly load AOT compilation|Directly load the compiled graph|"
                               r"FlashInfer autotune cache loaded")
MADE_NOW = re.compile(r"saved AOT compiled function|Compiling a graph for")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerLog:
    """What the server printed: a bounded tail, its phases, the lines about caches."""

    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    phases: dict[str, float] = field(default_factory=dict)
    milestone: str = "starting the process"
    from_cache: list[str] = field(default_factory=list)  # at most 20
    made: int = 0  # lines saying a compile artefact was made now (a miss)
    lines: int = 0

    def feed(self, line: str) -> None:
        self.lines += 1
        self.tail.append(line)
        for phase, pattern in PHASE_LINES:
            m = re.search(pattern, line)
            if m:
                self.phases[phase] = round(self.phases.get(phase, 0.0) + float(m.group("s")), 3)
        for name, pattern in MILESTONES:
            if re.search(pattern, line):
                self.milestone = name
        if LOADED_FROM_CACHE.search(line) and len(self.from_cache) < 20:
            self.from_cache.append(line.strip()[-300:])
        if MADE_NOW.search(line):
            self.made += 1


class ServerError(RuntimeError):
    """The server did not come up, answer or stop (names the step and what it printed)."""


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: ServerLog
    started: float
    _reader: threading.Thread

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, n: int = 25) -> str:
        return "\n".join(list(self.log.tail)[-n:])


def start(argv: Sequence[str], env: Mapping[str, str], port: int, echo: Optional[Log] = None) -> Server:
    """Start ``argv`` in a new process group; its output is read on a thread (and echoed
    to ``echo`` when given, each line prefixed ``vllm:``)."""
    proc = subprocess.Popen(list(argv), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                            start_new_session=True)
    log = ServerLog()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.feed(line.rstrip("\n"))
            if echo is not None:
                echo(f"vllm: {line.rstrip()}")

    reader = threading.Thread(target=read, name="vllm-log", daemon=True)
    reader.start()
    return Server(proc, port, log, time.monotonic(), reader)


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback only
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _post(url: str, body: dict, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # loopback only
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc).encode()


def wait_ready(server: Server, deadline: float, log: Log, poll_s: float = 1.0) -> float:
    """Seconds until ``/health`` answered 200. Raises ServerError when the process exits
    first or the deadline passes (the caller stops it)."""
    last_note = time.monotonic()
    while True:
        code = server.proc.poll()
        if code is not None:
            server._reader.join(5)
            raise ServerError(f"vLLM exited with code {code} before it was ready, while "
                              f"{server.log.milestone}; its last lines:\n{server.tail()}")
        status, _ = _get(server.base + "/health", timeout=2.0)
        now = time.monotonic()
        if status == 200:
            return now - server.started
        if now >= deadline:
            raise ServerError(f"vLLM was not ready within the warmup's timeoutSeconds (while "
                              f"{server.log.milestone}, {now - server.started:.0f}s in); its last lines:\n{server.tail()}")
        if now - last_note >= PROGRESS_S:
            log(f"engine: vLLM is {server.log.milestone} ({now - server.started:.0f}s, {server.log.lines} log lines)")
            last_note = now
        time.sleep(poll_s)


def exercise(server: Server, timeout_s: float) -> dict:
    """One short request, as a client's first: a completion (or an embedding, for a
    pooling model). Returns what was asked and answered."""
    status, body = _get(server.base + "/v1/models", timeout=10.0)
    try:
        model = json.loads(body)["data"][0]["id"] if status == 200 else None
    except (ValueError, KeyError, IndexError, TypeError):
        model = None
    if model is None:
        raise ServerError(f"GET /v1/models answered {status}: {body[:300]!r}")
    t0 = time.monotonic()
    status, body = _post(server.base + "/v1/completions", GREEDY | {"model": model}, timeout_s)
    if status == 200:  # and the sampling path (top-k/top-p kernels are built on first use)
        sampled, _ = _post(server.base + "/v1/completions", SAMPLED | {"model": model}, timeout_s)
        return {"endpoint": "/v1/completions", "model": model, "seconds": round(time.monotonic() - t0, 3),
                "sampled": sampled == 200, "fingerprint": _fingerprint(body)}
    tried = [f"/v1/completions: {status} {body[:200]!r}"]
    status, body = _post(server.base + "/v1/embeddings", {"model": model, "input": "Hello"}, timeout_s)
    if status == 200:  # a pooling model
        return {"endpoint": "/v1/embeddings", "model": model, "seconds": round(time.monotonic() - t0, 3)}
    tried.append(f"/v1/embeddings: {status} {body[:200]!r}")
    raise ServerError("the server answered no request: " + "; ".join(tried))


GREEDY = {"prompt": "Hello", "max_tokens": 8, "temperature": 0}
SAMPLED = {"prompt": "Hello", "max_tokens": 8, "temperature": 0.8, "top_p": 0.9, "top_k": 40}


def _fingerprint(body: bytes) -> Optional[str]:
    """vLLM's ``system_fingerprint`` (vllm-<version>-<config hash>): the same in the warmer's
    server and the real one when their configs hash alike."""
    try:
        value = json.loads(body).get("system_fingerprint")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _reap() -> None:
    """Collect exited orphans: in a container the warmer is often PID 1, and the server's
    children are re-parented to it when the server exits first (a zombie still counts as
    a member of the group)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _group_alive(pgid: int) -> bool:
    _reap()
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(server: Server, grace_s: float = STOP_GRACE_S) -> dict:
    """SIGTERM to the server, SIGKILL to its whole group after ``grace_s``; returns how it
    ended. Every process of the group is gone when this returns."""
    pgid = server.proc.pid  # start_new_session: the group is the server's pid
    t0 = time.monotonic()
    how = "exited"
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)  # vLLM shuts its engine core and workers down
        try:
            server.proc.wait(grace_s)
            how = "SIGTERM"
        except subprocess.TimeoutExpired:
            how = "SIGKILL"
    end = time.monotonic() + grace_s
    while _group_alive(pgid) and time.monotonic() < end:  # engine-core and worker children
        time.sleep(0.2)
    if _group_alive(pgid):
        how = how if how == "SIGKILL" else f"{how}, children SIGKILL"
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        end = time.monotonic() + 10.0  # SIGKILL is not refused; wait for the kernel (and a reaper)
        while _group_alive(pgid) and time.monotonic() < end:
            time.sleep(0.1)
    if server.proc.poll() is None:
        server.proc.kill()
    server.proc.wait(10)
    server._reader.join(5)
    return {"how": how, "seconds": round(time.monotonic() - t0, 3), "exit_code": server.proc.returncode}
