"""Bench only: count Triton compiles in every process of a real vLLM server.

On PYTHONPATH after kernel-warmup's own sitecustomize (which chains to this one), with
``KW_BENCH_COMPILES=<file>``: every process imports Triton at start and appends one line
per Triton ``compile()`` to the file: ``{"pid", "name", "hit"}`` (Triton's compilation
listener tells a cache hit from a compile). vLLM's engine core and workers are separate
processes, so an in-process counter would see none of their compiles.
"""

import json
import os

_PATH = os.environ.get("KW_BENCH_COMPILES")
if _PATH:
    try:
        from triton import knobs

        def _listener(*, src, metadata, metadata_group, times, cache_hit):
            name = metadata.get("name", "?") if isinstance(metadata, dict) else "?"
            with open(_PATH, "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "name": name, "hit": bool(cache_hit)}) + "\n")

        knobs.compilation.listener = _listener
    except Exception as exc:  # noqa: BLE001 - a bench aid: say so, never break the server
        with open(_PATH, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "listener_error": f"{type(exc).__name__}: {exc}"}) + "\n")
