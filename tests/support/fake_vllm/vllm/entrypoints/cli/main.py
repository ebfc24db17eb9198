"""A stand-in for ``vllm serve`` (tests only): the process contract the engine phase relies
on, without a GPU. It logs vLLM's start-up lines, writes cache files where vLLM would
(``$VLLM_CACHE_ROOT``, ``$TRITON_CACHE_DIR``; a warm start loads them instead and says so),
serves ``/health``, ``/v1/models`` and ``/v1/completions`` (whose first call builds one
more file, as vLLM's sampling kernels are built on the first request), and exits on
SIGTERM. ``FAKE_VLLM_MODE`` makes it misbehave: ``crash``, ``hang`` (never ready),
``stubborn`` (ignores SIGTERM), ``orphan`` (leaves a child that ignores SIGTERM),
``badrequest`` (no endpoint answers). ``FAKE_VLLM_ARGV`` names a file for its argv."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def _flag(argv: list[str], name: str, default: str = "") -> str:
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return default


def _write_caches(argv: list[str]) -> None:
    # as vLLM's compile-cache key: neither the port nor the load format is hashed
    hashed = [t for i, t in enumerate(argv) if t not in ("--port", "--load-format")
              and (i == 0 or argv[i - 1] not in ("--port", "--load-format"))]
    key = hashlib.sha256(json.dumps(hashed).encode()).hexdigest()[:12]
    root = Path(os.environ["VLLM_CACHE_ROOT"])
    model = root / "torch_compile_cache" / key / "rank_0_0" / "model"
    if model.is_file():
        print("Directly load the compiled graph(s) for compile range (1, 8192) from the cache, took 0.05 s", flush=True)
    else:
        time.sleep(0.2)
        model.parent.mkdir(parents=True, exist_ok=True)
        model.write_bytes(b"compiled graph " + key.encode())
        print("torch.compile takes 0.42 s in total", flush=True)
    triton = Path(os.environ["TRITON_CACHE_DIR"]) / key
    if not (triton / "kernel.cubin").is_file():  # a cache hit writes nothing
        triton.mkdir(parents=True, exist_ok=True)
        (triton / "kernel.cubin").write_bytes(b"cubin " + key.encode())
    (root / "engine.lock").write_text(str(os.getpid()))  # rewritten at every start


class Handler(http.server.BaseHTTPRequestHandler):
    ready_at = 0.0
    model = "m"
    mode = "ok"

    def log_message(self, *args):  # quiet: the phase reads stdout
        pass

    def _send(self, code: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            ready = time.monotonic() >= self.ready_at and self.mode != "hang"
            self._send(200 if ready else 503, {})
        elif self.path == "/v1/models":
            self._send(200, {"data": [{"id": self.model}]})
        else:
            self._send(404, {})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.mode == "badrequest" or self.path != "/v1/completions":
            self._send(400, {"error": "no"})
            return
        lazy = Path(os.environ["VLLM_CACHE_ROOT"]) / "sampling" / "topk.so"
        if not lazy.is_file():
            lazy.parent.mkdir(parents=True, exist_ok=True)
            lazy.write_bytes(b"built on the first request")
        self._send(200, {"choices": [{"text": " world"}]})


def main() -> int:
    argv = sys.argv[1:]
    if os.environ.get("FAKE_VLLM_ARGV"):
        Path(os.environ["FAKE_VLLM_ARGV"]).write_text(json.dumps(sys.argv))
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    print("INFO Starting to load model", flush=True)
    print("INFO Model loading took 1.50 GiB memory and 0.250000 seconds", flush=True)
    if mode == "crash":
        print("RuntimeError: CUDA out of memory (stand-in)", flush=True)
        return 3
    _write_caches(argv)
    print("INFO Graph capturing finished in 1 secs, took 0.10 GiB", flush=True)
    print("INFO init engine (profile, create kv cache, warmup model) took 0.90 s", flush=True)
    Handler.ready_at = time.monotonic() + float(os.environ.get("FAKE_VLLM_READY_S", "0.3"))
    Handler.model = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else "m"
    Handler.mode = mode
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(_flag(argv, "--port", "8000"))), Handler)
    if mode == "orphan":  # a worker that outlives the server unless the group is killed
        subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                          "signal.SIG_IGN); time.sleep(600)"])
    stop = threading.Event()
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("INFO Starting vLLM API server on http://127.0.0.1", flush=True)
    stop.wait()
    server.shutdown()
    print("INFO Shutting down", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
