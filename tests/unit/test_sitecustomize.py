"""The serving-side sitecustomize, in fresh interpreters, with a fake `flashinfer` package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SITE = Path(__file__).resolve().parents[2] / "initcontainer" / "serving_site"

# Mirrors what flashinfer 0.6.18's `flashinfer.autotuner` package exports (its
# __init__ re-exports AutoTuner, _METADATA_KEY and _collect_metadata, and nothing else
# the sitecustomize may use).
FAKE_AUTOTUNER = '''
import json, os
_METADATA_KEY = "_metadata"
IMPORTED = True
def _collect_metadata():
    return {"flashinfer_version": "9.9", "gpu": os.environ.get("FAKE_GPU", "NVIDIA H200")}
class AutoTuner:
    _instance = None
    def __init__(self):
        self._file_configs = {}
        self.loaded = []
    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = AutoTuner()
        return cls._instance
    def load_configs(self, path):
        if os.environ.get("FAKE_LOAD_RAISES"):
            raise RuntimeError("boom")
        with open(path) as f:
            cfg = json.load(f)
        cfg.pop(_METADATA_KEY, None)
        self._file_configs.update(cfg)
        self.loaded.append(path)
        return True
    def choose_one(self, custom_op, runners, tuning_config, inputs, **kw):
        return custom_op, sorted(self._file_configs)
'''


@pytest.fixture()
def world(tmp_path):
    fake = tmp_path / "fake"
    (fake / "flashinfer").mkdir(parents=True)
    (fake / "flashinfer" / "__init__.py").write_text("from . import autotuner\n")
    (fake / "flashinfer" / "autotuner.py").write_text(FAKE_AUTOTUNER)
    chained = tmp_path / "chained"
    chained.mkdir()
    (chained / "sitecustomize.py").write_text("import os\nos.environ['CHAINED_RAN'] = '1'\n")
    cache = tmp_path / "cache" / "flashinfer"
    for key, gpu, entry in (("env-h200", "NVIDIA H200", "k-h200"), ("env-h100", "NVIDIA H100", "k-h100")):
        (cache / key).mkdir(parents=True)
        (cache / key / "autotune.json").write_text(json.dumps(
            {"_metadata": {"flashinfer_version": "9.9", "gpu": gpu}, entry: ["Runner", [1]]}))
    return tmp_path, fake, chained, cache


def run(world, code, **env_over):
    tmp, fake, chained, cache = world
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_WARMUP", "PYTHON"))}
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(fake), str(chained)])
    env["KERNEL_WARMUP_FLASHINFER_DIR"] = str(cache)
    env.update(env_over)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_nothing_imported_until_flashinfer_is_and_chain_runs(world):
    out = run(world, """
        import os, sys
        print(os.environ.get("CHAINED_RAN"), "flashinfer" in sys.modules)
    """).stdout.split()
    assert out == ["1", "False"]


def test_first_choose_one_loads_only_the_matching_environment(world):
    out = run(world, """
        import flashinfer.autotuner as a
        t = a.AutoTuner.get()
        print(len(t.loaded))            # nothing loaded at import time
        print(t.choose_one("bf16_gemm", [], None, []))
        print([p.split("/")[-2] for p in t.loaded])
    """).stdout.splitlines()
    assert out[0] == "0"
    assert out[1] == "('bf16_gemm', ['k-h200'])"
    assert out[2] == "['env-h200']"


def test_reloads_after_the_file_configs_are_cleared(world):
    out = run(world, """
        import flashinfer.autotuner as a
        t = a.AutoTuner.get()
        t.choose_one("x", [], None, [])
        t._file_configs.clear()         # what autotune(cache=...) does on entry
        print(t.choose_one("x", [], None, [])[1], len(t.loaded))
    """, FAKE_GPU="NVIDIA H100").stdout.split()
    assert out == ["['k-h100']", "2"]


def test_switch_off_keeps_flashinfer_untouched_but_still_chains(world):
    out = run(world, """
        import os
        import flashinfer.autotuner as a
        print(os.environ.get("CHAINED_RAN"), a.AutoTuner.get().choose_one("x", [], None, [])[1])
    """, KERNEL_WARMUP_SITECUSTOMIZE="0").stdout.split()
    assert out == ["1", "[]"]


def test_errors_become_one_warning_line_never_an_exception(world):
    proc = run(world, """
        import flashinfer.autotuner as a
        print(a.AutoTuner.get().choose_one("x", [], None, [])[1])
    """, FAKE_LOAD_RAISES="1")
    assert proc.stdout.strip() == "[]"
    assert "kernel-warmup sitecustomize: warning: could not load" in proc.stderr and "boom" in proc.stderr


def test_missing_cache_dir_is_harmless(world):
    proc = run(world, """
        import flashinfer.autotuner as a
        print(a.AutoTuner.get().choose_one("x", [], None, [])[1])
    """, KERNEL_WARMUP_FLASHINFER_DIR="/nonexistent/flashinfer")
    assert proc.stdout.strip() == "[]"
    assert "no tactic file" in proc.stderr


def test_sitecustomize_literals_match_the_warmer():
    """The sitecustomize is stdlib-only and imports nothing of the warmer, so the file
    name it looks for is a literal: pinned here to the warmer's own constant."""
    from kernel_warmer.flashinfer.tune import TUNE_FILE
    from warmup_operator.core import names

    source = (SITE / "sitecustomize.py").read_text()
    assert f'"{TUNE_FILE}"' in source
    assert names.ENV_FLASHINFER_DIR in source


# --- coverage: a file whose fused-MoE keys do not include this rank is refused ------------

MOE_KEY = "('trtllm::fused_moe::gemm1', 'MoERunner', ((64, 2048),), (torch.bfloat16, 8, 2, 0, 1, 0))"


def moe_world(world, coverage):
    """One H200 tactic file with a fused-MoE entry and (optionally) the warmer's record."""
    tmp, fake, chained, cache = world
    doc = {"_metadata": {"flashinfer_version": "9.9", "gpu": "NVIDIA H200"}, MOE_KEY: ["MoERunner", [3]]}
    if coverage is not None:
        doc["_records"] = {"kernel_warmup": {"coverage": coverage}}
    (cache / "env-h200" / "autotune.json").write_text(json.dumps(doc))
    return world


LOAD = """
    import multiprocessing, os
    if os.environ.get("WORKER_NAME"):
        multiprocessing.current_process().name = os.environ["WORKER_NAME"]
    import flashinfer.autotuner as a
    print(len(a.AutoTuner.get().choose_one("x", [], None, [])[1]))
"""
TWO_RANKS = {"world_size": 2, "worker_ranks": [0, 1], "rank_keys": [[0, 0], [1, 0]]}


@pytest.mark.parametrize("env, loaded, said", [
    ({"RANK": "1"}, True, None),
    ({}, True, None),  # one process: rank 0
    ({"RANK": "2"}, False, "this process is rank 2 (env RANK)"),
    ({"WORKER_NAME": "VllmWorker-3", "RANK": "0"}, False, "rank 3 (process name VllmWorker-3)"),
    ({"WORKER_NAME": "VllmWorker-1"}, True, None),
], ids=["rank1", "single", "rank2-env", "vllm-worker-3", "vllm-worker-1"])
def test_refuses_a_file_that_does_not_cover_this_rank(world, env, loaded, said):
    proc = run(moe_world(world, TWO_RANKS), LOAD, **env)
    assert (proc.stdout.strip() != "0") == loaded, proc.stderr
    if said:
        assert "refusing" in proc.stderr and said in proc.stderr and "covers worker ranks [0, 1]" in proc.stderr


def test_refuses_moe_tactics_without_a_coverage_record(world):
    proc = run(moe_world(world, None), LOAD, RANK="0")
    assert proc.stdout.strip() == "0"
    assert "without a record of the ranks it covers" in proc.stderr


def test_coverage_literals_match_the_warmer():
    from kernel_warmer.flashinfer import tactics

    source = (SITE / "sitecustomize.py").read_text()
    assert f'"{tactics.RECORDS_KEY}", "{tactics.NAMESPACE}"' in source
    assert all(op.startswith("trtllm::fused_moe::") for op in tactics.MOE_CUSTOM_OPS)
    assert "_MOE_KEY_PREFIX = \"('trtllm::fused_moe::\"" in source


FAKE_VLLM_STATE = """
import sys, types
ps = types.ModuleType("vllm.distributed.parallel_state")
ps.model_parallel_is_initialized = lambda: True
ps.get_tensor_model_parallel_world_size = lambda: 2
ps.get_tensor_model_parallel_rank = lambda: 1
ps.get_dp_group = lambda: types.SimpleNamespace(rank_in_group=1)
sys.modules[ps.__name__] = ps
"""


def test_vllm_groups_give_the_rank_the_fused_moe_flattens_over_dp(world):
    """DP rank 1, TP rank 1 of TP 2 is MoE rank 3 (vLLM's flatten_tp_across_dp_and_pcp)."""
    proc = run(moe_world(world, TWO_RANKS), FAKE_VLLM_STATE + textwrap.dedent(LOAD), RANK="0")
    assert proc.stdout.strip() == "0" and "rank 3 (vLLM's TP/DP groups)" in proc.stderr


def test_a_gemm_only_file_is_loaded_by_any_rank(world):
    """GEMM keys hold no rank: a coverage record does not restrict them."""
    tmp, fake, chained, cache = world
    doc = json.loads((cache / "env-h200" / "autotune.json").read_text())
    doc["_records"] = {"kernel_warmup": {"coverage": {"world_size": 2, "worker_ranks": [0, 1], "rank_keys": []}}}
    (cache / "env-h200" / "autotune.json").write_text(json.dumps(doc))
    assert run(world, LOAD, RANK="7").stdout.strip() != "0"
