"""The serving command as the engine phase runs it, and what of it keys the caches (pure).

The warmer starts the serving container's own ``vllm serve`` command, changed in exactly
two places: ``--load-format dummy`` (no weight is read; vLLM's compile-cache key does not
hash the load config, so the dummy start compiles what the real one looks up) and
``--port <free port>`` (the warmer's server must not take the port the Pod exposes). Every
other token is passed byte for byte, in its order.

A shell wrapper (``sh -c "... vllm serve ..."``) is not run as a shell: only its
``vllm serve`` tokens are, through the image's own interpreter, since what else the shell
line does (downloads, waits) is not ours to repeat.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from kernel_warmer.engine import find_serve_args

# The flags the engine phase sets; any spelling of them in the command is dropped first.
LOAD_FORMAT, PORT = "--load-format", "--port"
CLI_MODULE = "vllm.entrypoints.cli.main"
# Env vars that are paths of this warmup rather than settings of vLLM (the same value in
# both containers, chosen by the operator): left out of the key as they say nothing new.
PATH_ENV = ("VLLM_CACHE_ROOT",)


class ServeCommandError(ValueError):
    """The serving command cannot be run by the engine phase (names why)."""


def _flag_name(token: str) -> Optional[str]:
    """"--load_format=x" -> "--load-format"; None for a token that is no long flag."""
    if not token.startswith("--"):
        return None
    head = token[2:].split("=", 1)[0]
    return "--" + head.replace("_", "-")


def without(tokens: Sequence[str], flag: str) -> list[str]:
    """``tokens`` without every ``flag value`` / ``flag=value`` (vLLM's underscore spelling too)."""
    out: list[str] = []
    skip = False
    for tok in tokens:
        if skip:
            skip = False
            continue
        if _flag_name(tok) == flag:
            skip = "=" not in tok
            continue
        out.append(tok)
    return out


@dataclass(frozen=True)
class ServeArgv:
    """How the phase starts vLLM: ``module`` run by the image's Python, with ``tokens``
    (the server's own arguments after ``serve``, or after the api_server module)."""

    module: str
    serve_subcommand: bool
    tokens: tuple[str, ...]
    how: str  # where the tokens were found (engine.find_serve_args)

    def argv(self, python: str, port: int) -> list[str]:
        rest = [*without(without(self.tokens, LOAD_FORMAT), PORT), LOAD_FORMAT, "dummy", PORT, str(port)]
        head = [python, "-m", self.module] + (["serve"] if self.serve_subcommand else [])
        return head + rest

    def key_tokens(self) -> list[str]:
        """What of the command keys the caches: everything but the load format (vLLM's
        key hashes neither it nor the port; the port stays, as the server has it)."""
        return without(self.tokens, LOAD_FORMAT)


def serve_argv(command: Sequence[str], args: Sequence[str]) -> ServeArgv:
    """The container's ``command``/``args`` as the engine phase runs them."""
    tokens, how = find_serve_args(command, args)
    if tokens is None:
        raise ServeCommandError(f"{how}: there is no vLLM server to start")
    if "api_server" in how:  # "...: python -m vllm.entrypoints.openai.api_server"
        return ServeArgv(how.rsplit("python -m ", 1)[1], False, tuple(tokens), how)
    return ServeArgv(CLI_MODULE, True, tuple(tokens), how)


def vllm_env(env: Mapping[str, str]) -> dict[str, str]:
    """The ``VLLM_*`` variables (vLLM hashes its env into its compile-cache key)."""
    return {k: v for k, v in sorted(env.items()) if k.startswith("VLLM_") and k not in PATH_ENV}


def key_doc(serve: ServeArgv, env: Mapping[str, str], vllm_version: Optional[str]) -> dict:
    """The engine phase's part of the cache key: what vLLM's own key hashes, or more (the
    GPU model, CUDA, torch and Triton versions are in the environment half of the key)."""
    return {"vllm": vllm_version, "module": serve.module, "tokens": serve.key_tokens(), "env": vllm_env(env)}


def digest(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
