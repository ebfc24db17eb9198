"""kernel-warmup, serving side: hand the warmed FlashInfer tactics to the AutoTuner.

The operator puts this folder first on the serving container's PYTHONPATH and sets
``KERNEL_WARMUP_FLASHINFER_DIR=<mount>/flashinfer``. Nothing happens at start-up beyond
installing an import hook: when ``flashinfer.autotuner`` is imported, ``AutoTuner.choose_one``
is wrapped so that its first call (CUDA is up by then) loads the tactic file whose
recorded environment matches this process (FlashInfer's own metadata check). A process
that never imports FlashInfer pays one meta-path lookup per import and nothing else.

``KERNEL_WARMUP_SITECUSTOMIZE=0`` disables it. Any ``sitecustomize`` found later on
sys.path still runs. Errors never reach the serving process: one warning line on stderr.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import threading

_TARGET = "flashinfer.autotuner"
# The warmer's record of the ranks a file covers (kernel_warmer/flashinfer/tactics.py).
_RECORDS, _NAMESPACE = "_records", "kernel_warmup"
# Fused-MoE file keys start with these ops; FlashInfer keys them per tp/ep rank.
_MOE_KEY_PREFIX = "('trtllm::fused_moe::"
_VLLM_WORKER = re.compile(r"VllmWorker-(\d+)")
_HERE = os.path.dirname(os.path.abspath(__file__))


def _warn(msg):
    try:
        sys.stderr.write(f"kernel-warmup sitecustomize: warning: {msg}\n")
    except Exception:  # noqa: BLE001
        pass


def _candidate_files(root):
    """Tactic files under ``root/<env-key>/``, newest first."""
    found = []
    try:
        for entry in os.scandir(root):
            path = os.path.join(entry.path, "autotune.json")
            if entry.is_dir() and os.path.isfile(path):
                found.append((os.path.getmtime(path), path))
    except FileNotFoundError:
        return []
    return [p for _, p in sorted(found, reverse=True)]


def _mismatches(saved, current):
    """FlashInfer's own rule (load_configs): every tracked field equal, or "*" saved."""
    if not isinstance(saved, dict):
        saved = {}
    return {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) not in (v, "*")}


def _vllm_moe_rank():
    """vLLM's own view once its groups exist: the rank its fused MoE flattens over TP x DP
    (fused_moe/config.py flatten_tp_across_dp_and_pcp: dp_rank * tp_size + tp_rank)."""
    ps = sys.modules.get("vllm.distributed.parallel_state")
    if ps is None or not ps.model_parallel_is_initialized():
        return None
    tp_size, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    try:
        dp_rank = ps.get_dp_group().rank_in_group
    except Exception:  # noqa: BLE001 - no DP group: one DP rank
        dp_rank = 0
    return dp_rank * tp_size + tp_rank


def process_rank():
    """(rank, how it was found) of this serving process, as the fused MoE's tp/ep rank
    runs over the world: vLLM's TP/DP groups once they exist (they do before its first
    FlashInfer call), else torch.distributed, else the name vLLM's multiproc executor gives
    a worker (``VllmWorker-<rank>``), else ``RANK`` (torchrun, vLLM's external launcher),
    else 0 (one process)."""
    try:
        rank = _vllm_moe_rank()
        if rank is not None:
            return rank, "vLLM's TP/DP groups"
    except Exception:  # noqa: BLE001
        pass
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), "torch.distributed"
    except Exception:  # noqa: BLE001
        pass
    mp = sys.modules.get("multiprocessing")
    name = mp.current_process().name if mp is not None else ""
    match = _VLLM_WORKER.fullmatch(name or "")
    if match:
        return int(match.group(1)), f"process name {name}"
    env = os.environ.get("RANK", "")
    if env.isdigit():
        return int(env), "env RANK"
    return 0, "one process (no vLLM groups, torch.distributed, vLLM worker name or RANK)"


def coverage_problem(doc, rank, where):
    """Why a tactic file must not be loaded by this rank (None: it covers it). Only the
    fused-MoE entries are keyed by rank; a file with them but no coverage record cannot
    show that it covers this rank."""
    if not any(isinstance(k, str) and k.startswith(_MOE_KEY_PREFIX) for k in doc):
        return None
    records = doc.get(_RECORDS)
    cov = ((records or {}).get(_NAMESPACE) or {}).get("coverage") if isinstance(records, dict) else None
    if not isinstance(cov, dict):
        return ("it holds fused-MoE tactics, which FlashInfer keys per rank, without a record of the ranks it "
                "covers (an older warmer wrote it): re-run the warmer")
    ranks = cov.get("worker_ranks") or []
    if rank not in ranks:
        return (f"it covers worker ranks {ranks} of a world of {cov.get('world_size')}, and this process is rank "
                f"{rank} ({where}): this rank would tune alone while the others skip it, a collective deadlock; "
                f"re-run the warmer for this world (tensor/expert parallel size)")
    return None


def load_matching(autotuner_module, root):
    """Load every file whose ``_metadata`` matches this process and whose coverage record
    includes this process's rank; returns the paths loaded and, for files that were not,
    why (field: saved vs current; "coverage": the reason, this rank).

    Uses only names that ``flashinfer.autotuner`` exports (``_collect_metadata``,
    ``_METADATA_KEY``, ``AutoTuner``); the mismatch rule is re-stated above because
    FlashInfer does not export its helper for it.
    """
    import json

    current = autotuner_module._collect_metadata()
    tuner = autotuner_module.AutoTuner.get()
    rank, where = process_rank()
    loaded, rejected = [], {}
    for path in _candidate_files(root):
        try:
            with open(path) as f:
                doc = json.load(f)
            diff = _mismatches(doc.get(autotuner_module._METADATA_KEY) or {}, current)
            if diff:
                rejected[path] = diff
                continue
            why = coverage_problem(doc, rank, where)
            if why:
                rejected[path] = {"coverage": (why, f"rank {rank}")}
                _warn(f"refusing {path}: {why}")
                continue
            if tuner.load_configs(path):
                loaded.append(path)
            else:
                rejected[path] = {"load_configs": (True, False)}
        except Exception as exc:  # noqa: BLE001
            _warn(f"could not load {path}: {type(exc).__name__}: {exc}")
    return loaded, rejected


def _patch(module):
    root = os.environ.get("KERNEL_WARMUP_FLASHINFER_DIR")
    if not root:
        return
    tuner_cls = module.AutoTuner
    original = tuner_cls.choose_one
    if getattr(original, "_kernel_warmup", False):
        return
    state = {"loaded": None, "sentinel": None}
    lock = threading.Lock()

    def ensure_loaded(tuner):
        # Reload if an ``autotune(cache=...)`` context cleared the file configs since.
        if state["loaded"] is not None and (state["sentinel"] is None or state["sentinel"] in tuner._file_configs):
            return
        with lock:
            try:
                before = set(tuner._file_configs)
                state["loaded"], rejected = load_matching(module, root)
                added = set(tuner._file_configs) - before
                state["sentinel"] = next(iter(added), None)
                state["rejected"] = rejected
                if not state["loaded"] and os.environ.get("KERNEL_WARMUP_QUIET") != "1":
                    why = "; ".join(
                        f"{p}: " + ", ".join(f"{k} saved={a} current={b}" for k, (a, b) in d.items())
                        for p, d in rejected.items()
                    )
                    _warn(f"no tactic file in {root} matches this environment; FlashInfer will tune"
                          + (f" ({why})" if why else ""))
            except Exception as exc:  # noqa: BLE001
                state["loaded"], state["sentinel"] = [], None
                _warn(f"loading tactics failed: {type(exc).__name__}: {exc}")

    def choose_one(self, *args, **kwargs):
        try:
            ensure_loaded(self)
        except Exception:  # noqa: BLE001
            pass
        return original(self, *args, **kwargs)

    choose_one._kernel_warmup = True
    choose_one.__wrapped__ = original
    tuner_cls.choose_one = choose_one
    module._kernel_warmup_state = state


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        try:
            _patch(module)
        except Exception as exc:  # noqa: BLE001
            _warn(f"could not hook {_TARGET}: {type(exc).__name__}: {exc}")


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None:
                return None
            spec.loader = _Loader(spec.loader)
            return spec
        except Exception as exc:  # noqa: BLE001
            _warn(f"import hook failed: {exc}")
            return None


def _chain():
    """Run the next ``sitecustomize`` on sys.path, which ours shadows."""
    here = os.path.normcase(_HERE)
    rest = [p for p in sys.path if os.path.normcase(os.path.abspath(p or os.curdir)) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or os.path.normcase(os.path.dirname(os.path.abspath(spec.origin))) == here:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["_kernel_warmup_chained_sitecustomize"] = module
    spec.loader.exec_module(module)


def _install():
    if os.environ.get("KERNEL_WARMUP_SITECUSTOMIZE", "1") != "0":
        if _TARGET in sys.modules:
            _patch(sys.modules[_TARGET])
        elif not any(isinstance(f, _Finder) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())


try:
    _install()
except Exception as _exc:  # noqa: BLE001
    _warn(f"disabled after an error: {type(_exc).__name__}: {_exc}")
try:
    _chain()
except Exception as _exc:  # noqa: BLE001
    _warn(f"chained sitecustomize raised {type(_exc).__name__}: {_exc}")
