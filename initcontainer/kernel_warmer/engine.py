"""What the serving engine will run, read from the serving container's ``vllm serve`` command.

Part of the contract (stdlib only): the operator reads it from the workload's container
(command, args, literal env) and the warmer's CLI from ``--serve-command``. The facts below
are vLLM's (``vllm/engine/arg_utils.py``, ``vllm/config/*.py``,
``vllm/utils/argparse_utils.py``); the names that differ between releases are in
``kernel_warmer/versions.py``; every value records where it came from, so the status
can say "tensorParallelSize 2 from args --tensor-parallel-size".

What cannot be read is said, never guessed: a ``--config`` YAML file lives in the image,
and env values from ``valueFrom`` live in the cluster.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from kernel_warmer import versions
from kernel_warmer.errors import FieldError

# The releases whose flags this module knows (kernel_warmer/versions.py, one row a range):
# a name is accepted when any of them takes it; the warmer, which knows the image's vLLM,
# checks the exact release (versions.unknown_names).
VLLM_RELEASES = f"{versions.VLLM[0].label}-{versions.VLLM[-1].label}"
ATTENTION_BACKENDS = versions.ALL_NAMES.attention
KV_CACHE_DTYPES = versions.ALL_NAMES.kv_cache
MOE_BACKENDS = versions.ALL_NAMES.moe
LINEAR_BACKENDS = versions.ALL_NAMES.linear
# vllm/config/model.py: ModelDType, and what each spelling means
MODEL_DTYPES = {"auto": "auto", "half": "float16", "float16": "float16", "bfloat16": "bfloat16",
                "float": "float32", "float32": "float32"}
RUNNERS = ("auto", "generate", "pooling", "draft")
# Environment variables vLLM reads that decide a FlashInfer kernel (vllm/envs.py of 0.26-0.34,
# both ``bool(int(os.getenv(name, "1")))``): FP8 block-scale dense layers on Hopper run
# FlashInfer's fp8_blockscale_gemm_sm90 for M < 32 only while both are on.
ENV_FIELDS = {
    "VLLM_USE_DEEP_GEMM": "engine.deepGemm",
    "VLLM_BLOCKSCALE_FP8_GEMM_FLASHINFER": "engine.flashinferBlockscaleFp8Gemm",
}
# Environment variables earlier vLLM releases read and 0.26-0.34 do not (vllm/envs.py).
REMOVED_ENV = {
    "VLLM_ATTENTION_BACKEND": "--attention-backend",
    "VLLM_USE_FLASHINFER_MOE_FP8": "--moe-backend flashinfer_cutlass",
    "VLLM_USE_FLASHINFER_MOE_FP4": "--moe-backend flashinfer_cutlass",
    "VLLM_USE_FLASHINFER_MOE_FP16": "--moe-backend flashinfer_cutlass",
    "VLLM_FLASHINFER_MOE_BACKEND": "--moe-backend flashinfer_cutlass|flashinfer_trtllm",
}


class EngineArgError(FieldError):
    """A serving-command flag is wrong; ``field`` names the flag as the user wrote it."""

    @staticmethod
    def describe(field_path: str) -> str:
        return f"serving command {field_path}"


@dataclass(frozen=True)
class ServeCommand:
    """What a ``vllm serve`` command sets, keyed by the warmer spec's own dotted field paths
    (``tensorParallelSize``, ``engine.attentionBackend``, ...): the spec is the one place
    these names are declared; this module only knows which flag feeds which field."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    # field path -> where its value came from ("args --tensor-parallel-size", "args -O0")
    sources: Mapping[str, str] = field(default_factory=dict)
    # what could not be read, in words (a --config file in the image, ...)
    notes: tuple[str, ...] = ()
    model: Optional[str] = None


@dataclass(frozen=True)
class Conflict:
    """A field the KernelWarmup sets to another value than the serving command does."""

    path: str
    kernelwarmup: Any
    command: Any
    source: str

    def message(self) -> str:
        return (f"spec.{self.path} is {self.kernelwarmup!r} but the serving command sets {self.command!r} "
                f"({self.source}); the KernelWarmup's value is used")


# --- flags ------------------------------------------------------------------------------

def _int(flag: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise EngineArgError(flag, f"must be an integer, got {raw!r:.60}") from None
    if value < 1:
        raise EngineArgError(flag, f"must be >= 1, got {value}")
    return value


def _choice(choices: Sequence[str], normalise=lambda s: s):
    def parse(flag: str, raw: str) -> str:
        value = normalise(raw)
        if value not in choices:
            raise EngineArgError(flag, f"{raw!r:.60} is not one any vLLM {VLLM_RELEASES} knows; "
                                       f"one of: {', '.join(choices)}")
        return value
    return parse


def _dtype(flag: str, raw: str) -> str:
    return MODEL_DTYPES[_choice(tuple(MODEL_DTYPES))(flag, raw)]


def _backend(flag: str, raw: str) -> str:
    return _choice(ATTENTION_BACKENDS, lambda s: s.upper())(flag, raw)


def _lower_dash(s: str) -> str:
    return s.lower().replace("-", "_")  # what vLLM's --moe-backend/--linear-backend types do


def _str(flag: str, raw: str) -> str:
    return raw


# long flag (dashes) -> (field, parser); short aliases map onto these.
VALUE_FLAGS = {
    "--model": ("model", _str),
    "--tensor-parallel-size": ("tensorParallelSize", _int),
    "--data-parallel-size": ("engine.dataParallelSize", _int),
    "--dtype": ("dtype", _dtype),
    "--kv-cache-dtype": ("engine.kvCacheDtype", _choice(KV_CACHE_DTYPES)),
    "--quantization": ("engine.quantization", _str),
    "--max-num-batched-tokens": ("flashinfer.maxNumBatchedTokens", _int),
    "--attention-backend": ("engine.attentionBackend", _backend),
    "--mm-encoder-attn-backend": ("engine.mmEncoderAttnBackend", _backend),
    "--linear-backend": ("engine.linearBackend", _choice(LINEAR_BACKENDS, _lower_dash)),
    "--moe-backend": ("engine.moeBackend", _choice(MOE_BACKENDS, _lower_dash)),
    "--runner": ("engine.runner", _choice(RUNNERS)),
    "--mm-encoder-tp-mode": ("engine.mmEncoderTpMode", _choice(("weights", "data"))),
    "--optimization-level": ("optimization_level", _str),
}
# EnableDisableAction (vllm/utils/argparse_utils.py): --enable-x, --disable-x, --no-enable-x.
BOOL_FLAGS = {
    f"--{prefix}{name}": (field_name, prefix == "enable-")
    for name, field_name in (("expert-parallel", "engine.enableExpertParallel"),
                             ("flashinfer-autotune", "engine.flashinferAutotune"))
    for prefix in ("enable-", "disable-", "no-enable-")
}
SHORT = {"-tp": "--tensor-parallel-size", "-dp": "--data-parallel-size",
         "-q": "--quantization", "-ep": "--enable-expert-parallel", "-ac": "--attention-config"}


def _normalise(flag: str) -> str:
    """vLLM accepts underscores anywhere in a long flag's name (argparse_utils.py)."""
    if flag.startswith("--"):
        head, dot, rest = flag[2:].partition(".")
        return "--" + head.replace("_", "-") + dot + rest
    head, dot, rest = flag.partition(".")
    return SHORT.get(head, head) + dot + rest


# --- finding the serve command ------------------------------------------------------------

_MODULE_SERVERS = ("vllm.entrypoints.openai.api_server", "vllm.entrypoints.api_server")


def find_serve_args(command: Sequence[str], args: Sequence[str]) -> tuple[Optional[list[str]], str]:
    """The tokens after ``vllm serve`` (or after ``-m vllm.entrypoints.openai.api_server``),
    and how they were found. ``(None, why)`` when the container does not start vLLM."""
    argv = [*command, *args]
    if len(argv) >= 3 and argv[0].rsplit("/", 1)[-1] in ("sh", "bash", "dash") and argv[1] in ("-c", "-lc", "-ec"):
        try:
            argv = shlex.split(argv[2]) + argv[3:]
        except ValueError as exc:
            return None, f"the shell command could not be split ({exc})"
        where = "the shell command"
    else:
        where = "command/args"
    for i, tok in enumerate(argv):
        base = tok.rsplit("/", 1)[-1]
        if base == "vllm" and i + 1 < len(argv) and argv[i + 1] == "serve":
            return argv[i + 2:], f"{where}: vllm serve"
        if tok == "-m" and i + 1 < len(argv) and argv[i + 1] in _MODULE_SERVERS:
            return argv[i + 2:], f"{where}: python -m {argv[i + 1]}"
        if tok == "-m" and i + 3 < len(argv) and argv[i + 1] == "vllm.entrypoints.cli.main" and argv[i + 2] == "serve":
            return argv[i + 3:], f"{where}: python -m vllm.entrypoints.cli.main serve"
    if not command and args:
        # vllm/vllm-openai's ENTRYPOINT is `vllm serve`: a container with args only starts it.
        return list(args), "args (the image's entrypoint, as in vllm/vllm-openai, is `vllm serve`)"
    return None, "the container's command does not run `vllm serve` or vLLM's API server"


# --- parsing ------------------------------------------------------------------------------

def _attention_config(flag: str, raw: str) -> Optional[str]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise EngineArgError(flag, f"must be JSON, e.g. '{{\"backend\": \"TRITON_ATTN\"}}', got {raw!r:.60}") from None
    if not isinstance(value, dict):
        raise EngineArgError(flag, "must be a JSON object")
    backend = value.get("backend")
    return None if backend is None else _backend(f"{flag} backend", str(backend))


def _tokens(argv: Sequence[str], positional_model: bool):
    """(flag, value or None) for every flag; the positional model first (``vllm serve`` only)."""
    i = 0
    if positional_model and argv and not argv[0].startswith("-"):
        yield "--model", argv[0]
        i = 1
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("-"):
            i += 1  # a value of a flag this module does not read
            continue
        if tok.startswith("-O") and not tok.startswith("--"):  # -O3, -O=3, -O 3 (argparse_utils.py)
            level = tok[3:] if tok[2:3] == "=" else tok[2:]
            if not level and i + 1 < len(argv) and argv[i + 1] in ("0", "1", "2", "3"):
                level, i = argv[i + 1], i + 1
            yield "--optimization-level", level or None
            i += 1
            continue
        flag, eq, value = tok.partition("=")
        flag = _normalise(flag)
        if eq:
            yield flag, value
        elif flag in BOOL_FLAGS:
            yield flag, None
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            yield flag, argv[i + 1]
            i += 1
        else:
            yield flag, None
        i += 1


def _hf_is_causal(flag: str, raw: str) -> Optional[bool]:
    """``is_causal`` from --hf-overrides (JSON) or --hf-overrides.is_causal (a bare value)."""
    if flag.endswith(".is_causal"):
        return {"false": False, "true": True}.get(raw.strip().lower())
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        if raw.lstrip().startswith("{"):
            raise EngineArgError(flag, f"must be JSON, e.g. '{{\"is_causal\": false}}', got {raw!r:.60}") from None
        return None
    causal = value.get("is_causal") if isinstance(value, dict) else None
    return causal if isinstance(causal, bool) else None


def _apply_flag(values: dict, sources: dict, notes: list, flag: str, value: Optional[str]) -> None:
    if flag in BOOL_FLAGS:
        name, on = BOOL_FLAGS[flag]
        values[name], sources[name] = on, f"args {flag}"
    elif flag in VALUE_FLAGS:
        name, parse = VALUE_FLAGS[flag]
        if value is None:
            raise EngineArgError(flag, "needs a value")
        if parse is _backend and value.lower() == "auto":
            return  # vLLM's "auto" is its automatic choice, as if unset (config/attention.py:228)
        values[name], sources[name] = parse(flag, value), f"args {flag}"
    elif flag in ("--attention-config", "--attention-config.backend"):
        if value is None:
            raise EngineArgError(flag, "needs a value")
        backend = (_backend(flag, value) if flag.endswith(".backend") else _attention_config(flag, value))
        if backend is not None:
            values["engine.attentionBackend"], sources["engine.attentionBackend"] = backend, f"args {flag}"
    elif flag in ("--hf-overrides", "--hf-overrides.is_causal") and value is not None:
        causal = _hf_is_causal(flag, value)
        if causal is not None:
            values["engine.bidirectional"], sources["engine.bidirectional"] = not causal, f"args {flag}"
    elif flag == "--config":
        notes.append(f"--config {value or ''} is a file in the image: its settings were not read; "
                     "put the flags that decide kernels on the command line, or set them in the KernelWarmup")


def parse_serve(command: Sequence[str] = (), args: Sequence[str] = (),
                env: Optional[Mapping[str, Optional[str]]] = None) -> Optional[ServeCommand]:
    """What a container's ``vllm serve`` command sets; None when it runs no vLLM.

    ``env``: the container's literal env (a value of None: set from ``valueFrom``, unreadable).
    Raises EngineArgError naming the flag for a value vLLM would reject.
    """
    argv, how = find_serve_args(command, args)
    if argv is None:
        return None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    notes: list[str] = [f"read from {how}"]
    api_server = "api_server" in how
    if api_server and argv and not argv[0].startswith("-"):
        notes.append(f"the positional {argv[0]!r} is ignored by vLLM's api_server module: only --model names the model")
    for flag, value in _tokens(argv, positional_model=not api_server):
        _apply_flag(values, sources, notes, flag, value)
    if values.get("engine.runner") == "auto":
        del values["engine.runner"], sources["engine.runner"]
    level = values.pop("optimization_level", None)
    sources.pop("optimization_level", None)
    if level == "0" and "engine.flashinferAutotune" not in values:
        # vllm/config/vllm.py: -O0 turns vLLM's FlashInfer autotune pass off
        values["engine.flashinferAutotune"], sources["engine.flashinferAutotune"] = False, "args -O0"
    for name, instead in REMOVED_ENV.items():
        if env and name in env:
            notes.append(f"env {name} is not read by vLLM {VLLM_RELEASES}; it uses {instead}")
    _apply_env(values, sources, notes, env or {})
    model = values.pop("model", None)
    sources.pop("model", None)
    return ServeCommand(values, sources, tuple(notes), model)


def _apply_env(values: dict[str, Any], sources: dict[str, str], notes: list[str],
               env: Mapping[str, Optional[str]]) -> None:
    """The env switches in ENV_FIELDS, parsed as vLLM parses them (``bool(int(value))``)."""
    for name, path in ENV_FIELDS.items():
        if name not in env:
            continue
        value = env[name]
        if value is None:
            notes.append(f"env {name} is set from valueFrom and was not read; set {path} in the KernelWarmup")
            continue
        try:
            values[path] = bool(int(value.strip()))
        except ValueError:
            raise EngineArgError(f"env {name}", f"vLLM reads it as bool(int(value)) and would fail on {value!r}; "
                                                "use 0 or 1") from None
        sources[path] = f"env {name}"


def get_path(data: Mapping[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def command_paths() -> set[str]:
    """Every spec field a serving command can set."""
    return ({p for p, _ in VALUE_FLAGS.values()} | {p for p, _ in BOOL_FLAGS.values()} | {"engine.bidirectional"}
            | set(ENV_FIELDS.values())) - {"model", "optimization_level"}


def merge_into_spec(spec: Mapping[str, Any], serve: Optional[ServeCommand]) -> tuple[dict[str, Any], list[Conflict]]:
    """The warmer spec (camelCase dict) with the command's settings filled in where the
    KernelWarmup left a field unset (None or "auto"); where both set it and differ, the
    KernelWarmup's value stays and a Conflict says so."""
    merged = json.loads(json.dumps(dict(spec)))  # a deep copy of plain JSON data
    conflicts: list[Conflict] = []
    if serve is None:
        return merged, conflicts
    for path, value in serve.settings.items():
        mine = get_path(merged, path)
        if mine is None or mine == "auto":
            node = merged
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        elif mine != value:
            conflicts.append(Conflict(path, mine, value, serve.sources[path]))
    return merged, conflicts
