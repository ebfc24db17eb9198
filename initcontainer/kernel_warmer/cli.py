"""`kernel-warmer plan | run | check`.

Model input, one of: --model-config PATH (a Hugging Face config.json or its folder),
--plan FILE (explicit layers, JSON or YAML), --spec FILE / --spec-env NAME (a full
WarmerSpec, how the operator-injected init container is started). Flags given next to
--spec override the spec's fields.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from kernel_warmer.deadline import Watchdog, kill_tree
from kernel_warmer.plan.model import ConfigError
from kernel_warmer.pod import in_pod, termination_path
import typing

from kernel_warmer.spec import SPEC_ENV, Dtype, EngineWarmup, FailurePolicy, ModelSource, Provider, Quantization, SpecError, Tuning, WarmerSpec, _load

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    pass


def choices(literal: object) -> list[str]:
    """A flag's choices: the values the spec's Literal allows (declared once, in spec.py)."""
    return list(typing.get_args(literal))


def _log(msg: str) -> None:
    print(f"[kernel-warmer] {msg}", file=sys.stderr, flush=True)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model (one of)")
    src.add_argument("--model-config", metavar="PATH", help="Hugging Face config.json (or its folder)")
    src.add_argument("--plan", metavar="FILE", help="explicit layers: JSON or YAML ({layers: [...]} or a list)")
    src.add_argument("--spec", metavar="FILE", help="a full WarmerSpec JSON file")
    src.add_argument("--spec-env", metavar="NAME", help=f"env var holding a WarmerSpec JSON (the operator uses {SPEC_ENV})")
    p.add_argument("--serve-command", metavar="CMD",
                   help="the serving container's command, e.g. \"vllm serve MODEL -tp 2 --attention-backend "
                        "TRITON_ATTN\": what it sets is planned for (the flags below override it)")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=None, metavar="N")
    p.add_argument("--dtype", choices=choices(Dtype), default=None)
    p.add_argument("--engine-warmup", choices=choices(EngineWarmup), default=None,
                   help="start the serve command itself with dummy weights (auto: where vLLM's server is in the "
                        "image and a GPU is visible)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR", help="cache volume root (triton/, flashinfer/, manifests/)")
    p.add_argument("--compile-only", action="store_true", help="compile without a GPU (needs --target)")
    p.add_argument("--target", metavar="SM", help="GPU arch to compile for without a GPU, e.g. sm_90")
    p.add_argument("--provider", choices=choices(Provider), default=None)
    p.add_argument("--workers", type=int, default=None, help="parallel compile workers (0: auto)")
    p.add_argument("--no-flashinfer", action="store_true", help="skip the FlashInfer autotune phase")
    p.add_argument("--quantization", choices=choices(Quantization), default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--tuning", choices=choices(Tuning), default=None,
                   help="FlashInfer: every rank tunes a share (sharded, default) or rank 0 tunes all (rank0)")
    p.add_argument("--timeout-seconds", type=int, default=None, metavar="S",
                   help="the whole run's deadline (spec.timeoutSeconds; default 1800); FlashInfer's fused-MoE JIT "
                        "build alone can take 15+ minutes on 16 cores")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kernel-warmer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_plan = sub.add_parser("plan", help="print the resolved work (runs on a CPU)")
    _add_model_args(p_plan)
    p_plan.add_argument("--json", action="store_true", help="machine-readable output")
    p_plan.add_argument("--quantization", choices=choices(Quantization), default=None)
    p_plan.add_argument("--max-num-batched-tokens", type=int, default=None)
    p_plan.add_argument("--sm", type=int, default=None, help="GPU SM for FlashInfer op gating (e.g. 90)")
    for name, helptext in (("run", "compile and tune into the cache"),
                           ("check", "exit 0 if the plan is warm for this environment, 1 if cold")):
        p = sub.add_parser(name, help=helptext)
        _add_model_args(p)
        _add_run_args(p)
        if name == "run":
            p.add_argument("--failure-policy", type=str.lower, choices=[v.lower() for v in choices(FailurePolicy)], default=None)
            p.add_argument("--termination-log", default=None, metavar="PATH",
                           help="also write the compact summary here (default: /dev/termination-log "
                                "inside a Pod, nowhere outside one)")
            p.add_argument("--sequential", action="store_true",
                           help="one variant after another in one process (the baseline loop)")
    return parser


# Plans and spec files are hand-written and small; refuse big ones before parsing.
MAX_PLAN_BYTES = 1 << 20


MAX_PLAN_NODES = 100_000


def expanded_nodes(data: Any, limit: int) -> int:
    """How many values ``data`` holds with every YAML alias expanded, counted without
    expanding (shared objects are counted once per reference, memoised by identity), and
    cut at ``limit`` + 1: a "billion laughs" plan is refused in microseconds."""
    memo: dict[int, int] = {}

    def count(x: Any) -> int:
        if id(x) in memo:
            return memo[id(x)]
        items = x.values() if isinstance(x, dict) else x if isinstance(x, list) else ()
        n = 1
        for item in items:
            n += count(item)
            if n > limit:
                break
        memo[id(x)] = n = min(n, limit + 1)
        return n

    try:
        return count(data)
    except RecursionError:
        return limit + 1


def load_plan_file(path: str) -> ModelSource:
    """Explicit layers from JSON or YAML, parsed with the spec's field-naming errors."""
    from kernel_warmer.plan.model import read_json_file, read_text_file

    if path.endswith((".yaml", ".yml")):
        text = read_text_file(Path(path), "plan file", "--plan", MAX_PLAN_BYTES)
        try:
            import yaml
        except ImportError:
            raise UsageError(f"--plan {path}: YAML needs PyYAML, which is not importable here; "
                             "install it or give the plan as JSON") from None
        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as exc:
            raise UsageError(f"--plan {path}: not valid YAML ({str(exc)[:200]})") from None
        if expanded_nodes(data, MAX_PLAN_NODES) > MAX_PLAN_NODES:
            raise UsageError(f"--plan {path}: expands to over {MAX_PLAN_NODES} values through YAML aliases "
                             "(*name); write the layers out (a layer's count field repeats it)")
    else:
        try:
            data = read_json_file(Path(path), "plan file", "--plan", MAX_PLAN_BYTES)
        except ConfigError as exc:
            raise UsageError(f"{exc}; YAML files must end in .yaml/.yml"
                             if "not valid JSON" in str(exc) else str(exc)) from None
    if isinstance(data, list):
        data = {"layers": data}
    return _load(ModelSource, data, "plan")


def spec_from_args(args: argparse.Namespace) -> WarmerSpec:
    sources = [n for n in ("model_config", "plan", "spec", "spec_env") if getattr(args, n, None)]
    if len(sources) != 1:
        raise UsageError("give exactly one of --model-config, --plan, --spec, --spec-env"
                         + (f" (got {', '.join('--' + s.replace('_', '-') for s in sources)})" if sources else ""))
    if args.spec:
        from kernel_warmer.plan.model import read_text_file

        spec = WarmerSpec.from_json(read_text_file(Path(args.spec), "spec file", "--spec", MAX_PLAN_BYTES))
    elif args.spec_env:
        text = os.environ.get(args.spec_env)
        if not text:
            raise UsageError(f"--spec-env {args.spec_env}: the environment variable is not set or empty")
        spec = WarmerSpec.from_json(text)
    else:
        model = load_plan_file(args.plan) if args.plan else ModelSource(config_path=args.model_config)
        spec = with_serve_command(WarmerSpec(model=model), getattr(args, "serve_command", None))
    return apply_overrides(spec, args)


def with_serve_command(spec: WarmerSpec, command: Optional[str]) -> WarmerSpec:
    """``spec`` with what a ``vllm serve`` command line sets (engine.py)."""
    if not command:
        return spec
    import shlex

    from kernel_warmer.engine import merge_into_spec, parse_serve

    try:
        serve = parse_serve(shlex.split(command))
    except ValueError as exc:
        raise UsageError(f"--serve-command: {exc}") from None
    if serve is None:
        raise UsageError("--serve-command: does not run `vllm serve` or vLLM's API server")
    merged, _ = merge_into_spec({"model": spec.to_dict()["model"]}, serve)
    for note in serve.notes[1:]:
        _log(f"serve command: {note}")
    merged["server"] = {"command": shlex.split(command)}  # what the engine phase starts
    return WarmerSpec.from_dict(merged)


def apply_overrides(spec: WarmerSpec, args: argparse.Namespace) -> WarmerSpec:
    top: dict[str, Any] = {}
    tri: dict[str, Any] = {}
    fi: dict[str, Any] = {}
    if args.tensor_parallel_size is not None:
        top["tensor_parallel_size"] = args.tensor_parallel_size
    if getattr(args, "engine_warmup", None):
        top["server"] = dataclasses.replace(spec.server, warmup=args.engine_warmup)
    if args.dtype is not None:
        top["dtype"] = args.dtype
    if getattr(args, "cache_dir", None):
        top["cache_dir"] = args.cache_dir
    if getattr(args, "timeout_seconds", None) is not None:
        top["timeout_seconds"] = args.timeout_seconds
    if getattr(args, "failure_policy", None):
        top["failure_policy"] = "Ignore" if args.failure_policy == "ignore" else "Fail"
    target = getattr(args, "target", None)
    if getattr(args, "compile_only", False) and not target:
        raise UsageError("--compile-only needs --target (the GPU arch to compile for, e.g. sm_90)")
    if target:
        from kernel_warmer.cache.envkey import normalize_target

        tri["compile_only_target"] = normalize_target(target)
    if getattr(args, "provider", None):
        tri["provider"] = args.provider
    if getattr(args, "workers", None) is not None:
        if args.workers < 0:
            raise UsageError(f"--workers must be >= 0 (0 picks from the GPUs and cores), got {args.workers}")
        tri["workers"] = args.workers
    if getattr(args, "no_flashinfer", False):
        fi["enabled"] = False
    if getattr(args, "quantization", None):
        fi["quantization"] = args.quantization
    if getattr(args, "max_num_batched_tokens", None) is not None:
        fi["max_num_batched_tokens"] = args.max_num_batched_tokens
    if getattr(args, "tuning", None):
        fi["tuning"] = args.tuning
    if tri:
        top["triton"] = dataclasses.replace(spec.triton, **tri)
    if fi:
        top["flashinfer"] = dataclasses.replace(spec.flashinfer, **fi)
    return dataclasses.replace(spec, **top) if top else spec


def cmd_plan(args: argparse.Namespace) -> int:
    from kernel_warmer.plan.model import load_arch
    from kernel_warmer.plan.triton import plan_triton

    spec = spec_from_args(args)
    arch = load_arch(spec.model, spec.dtype)
    tplan = plan_triton(arch, spec.tensor_parallel_size, spec.dtype, spec.engine)
    doc: dict[str, Any] = {"model_type": arch.model_type, "dtype": arch.dtype,
                           "tensor_parallel_size": spec.tensor_parallel_size, **tplan.to_dict()}
    try:
        from kernel_warmer.plan.flashinfer import plan_ops
    except ImportError as exc:
        raise UsageError(f"kernel_warmer.plan.flashinfer is not importable ({exc}); "
                         "the FlashInfer half of the plan is missing from this install") from None
    from kernel_warmer.versions import installed_vllm

    # unset: this vLLM's default on an H100/H200-class GPU (the warmer reads the real GPU at run time)
    tokens = spec.flashinfer.max_num_batched_tokens or installed_vllm().facts.default_max_num_batched_tokens(
        80 << 30, "H100", 90)
    ops, skipped_ops = plan_ops(arch, spec.tensor_parallel_size, tokens, spec.flashinfer.quantization, args.sm,
                                spec.engine)
    doc["autotune_ops"] = [o.to_dict() for o in ops]
    doc["skipped_ops"] = [s.to_dict() for s in skipped_ops]
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"model {arch.model_type}, {arch.num_hidden_layers} layers, dtype {arch.dtype}, "
          f"tensor-parallel {spec.tensor_parallel_size}")
    print(f"triton variants ({len(tplan.variants)}):")
    for v in tplan.variants:
        print(f"  {v.label}")
    for why in tplan.unreached:
        print(f"  none for {why}")
    if tplan.skipped:
        reasons: dict[str, list[int]] = {}
        for s in tplan.skipped:
            reasons.setdefault(s.reason, []).append(s.layer)
        print("skipped layers:")
        for reason, idx in reasons.items():
            print(f"  {reason}: {len(idx)} layer(s) ({', '.join(map(str, idx[:8]))}{'...' if len(idx) > 8 else ''})")
    print(f"flashinfer ops ({len(ops)}):")
    for o in doc["autotune_ops"]:
        print(f"  {json.dumps(o, sort_keys=True)}")
    for s in doc["skipped_ops"]:
        print(f"  skipped: {json.dumps(s, sort_keys=True)}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from kernel_warmer.runner import check

    warm, reason, key = check(spec_from_args(args))
    print(f"{'warm' if warm else 'cold'}: {reason} (key {key})")
    return EXIT_OK if warm else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    from kernel_warmer.report import WarmupSummary
    from kernel_warmer.runner import run

    term = termination_path(args.termination_log)
    try:
        spec = spec_from_args(args)
        if not (in_pod() or args.cache_dir or args.spec or args.spec_env):
            raise UsageError("--cache-dir DIR is required outside a Pod (the cache volume's root; "
                             "inside a Pod the operator's spec names it)")
    except (UsageError, SpecError, ConfigError, OSError) as exc:
        # still a summary: the operator reads the termination message for every outcome
        _log(f"error: {exc}")
        _finish(WarmupSummary(status="failed", error=str(exc)), term)
        return EXIT_OK if getattr(args, "failure_policy", None) == "ignore" else EXIT_USAGE
    finished = threading.Lock()
    out_fd = os.dup(1)  # the real stdout, for a timeout summary written while fd 1 points at stderr
    dog = Watchdog(float(spec.timeout_seconds), lambda s: _expire(spec, s, out_fd, term, finished)).start()
    with _stdout_to_stderr():
        summary = run(spec, _log, sequential=args.sequential)
    if not finished.acquire(blocking=False):  # the watchdog is reporting the timeout
        time.sleep(3600)
    dog.cancel()
    os.close(out_fd)
    _finish(summary, term)
    if summary.status == "failed":
        _log(f"failed: {summary.error}")
        if spec.failure_policy == "Ignore":
            _log("failurePolicy Ignore: exiting 0 so the server starts (cold)")
            return EXIT_OK
        return EXIT_FAILED
    return EXIT_OK


def _expire(spec: WarmerSpec, elapsed: float, out_fd: int, term: Optional[str], finished: threading.Lock) -> None:
    """The watchdog's end of a run that overran timeoutSeconds (see deadline.py)."""
    from kernel_warmer.report import WarmupSummary

    if not finished.acquire(blocking=False):
        return  # the run finished just now and reports itself
    killed = kill_tree()
    error = (f"timeoutSeconds ({spec.timeout_seconds}s) reached after {elapsed:.0f}s: the warmup was stopped "
             f"({killed} child process(es) killed); raise spec.timeoutSeconds or find the hang in the log above")
    _log(error)
    summary = WarmupSummary(status="failed", seconds=elapsed, error=error)
    with contextlib.suppress(OSError):
        os.write(out_fd, (summary.to_json() + "\n").encode())
    _write_termination(summary, term)
    ignore = spec.failure_policy == "Ignore"
    if ignore:
        _log("failurePolicy Ignore: exiting 0 so the server starts (cold)")
    os._exit(EXIT_OK if ignore else EXIT_FAILED)


@contextlib.contextmanager
def _stdout_to_stderr():
    """Keep stdout for the summary alone: libraries (FlashInfer prints cuDNN handle
    messages) and worker processes inherit fd 1, so point it at stderr while they work."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _finish(summary, termination_log: Optional[str]) -> None:
    print(summary.to_json(), flush=True)
    _write_termination(summary, termination_log)


def _write_termination(summary, termination_log: Optional[str]) -> None:
    from kernel_warmer.runner import write_termination_message

    if termination_log:
        write_termination_message(summary, termination_log)


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"plan": cmd_plan, "run": cmd_run, "check": cmd_check}
    try:
        return handlers[args.command](args)
    except (UsageError, SpecError, ConfigError) as exc:
        print(f"kernel-warmer {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"kernel-warmer {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        from kernel_warmer.triton.providers import ProviderError

        if isinstance(exc, (ProviderError, ValueError)):
            print(f"kernel-warmer {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
