"""The fused-MoE tactic path of a real FlashInfer release, run on a CPU (a test harness).

What is FlashInfer's own code here: ``flashinfer.cutlass_fused_moe`` and its inner op, the
``MoERunner`` (its ``get_cache_key_extras`` decides the file key), the ``AutoTuner``
(``choose_one``, bucket mapping, ``search_cache``, ``save_configs``, ``load_configs``) and
``autotune``. What stands in for the GPU: the compiled CUTLASS module (a runner with a few
tactics that does nothing), the CUDA device queries, and the kernel timing
(``_profile_single_kernel`` returns a fixed time per tactic, so the winners are the same
in every run). The keys, the file and the lookups are therefore the release's own.

Two steps, each in a fresh process (``python flashinfer_moe_cpu.py tune|serve ...``) with
the release's folder (tests/support/flashinfer_cpu.py) and the warmer on PYTHONPATH:

    tune   the warmer's own tuning (``kernel_warmer.flashinfer.tune.tune_ops``: rank 0's
           call, then every rank's keys and the coverage record) into ROOT/<env>/autotune.json
    serve  one serving rank: the serving-side sitecustomize on PYTHONPATH loads the file
           (rank from ``RANK``), then the fused MoE is called as vLLM 0.33's
           FlashInferExperts calls it (fused_moe/experts/flashinfer_cutlass_moe.py:365-389:
           no tune_max_num_tokens, its own tp/ep rank) at M = 1, 2, 4 .. m_max; prints how
           many AutoTuner lookups hit
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import types
from pathlib import Path

EXPERTS, TOP_K, HIDDEN, INTERMEDIATE = 8, 2, 256, 128


def stand_in_for_the_gpu() -> dict:
    """Patch what needs CUDA; returns the lookup record ({"hits": n, "lookups": n})."""
    import torch

    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    torch.cuda.device = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.is_current_stream_capturing = lambda: False
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.empty_cache = lambda: None

    from flashinfer.autotuner import AutoTuner
    from flashinfer.fused_moe import core

    class Runner:  # the compiled CUTLASS MoE runner: six tactics, three per GEMM
        def get_gemm1_tactic_count(self):
            return 3

        def get_gemm2_tactic_count(self):
            return 3

        def get_tactic_num(self):
            return 6

        def __getattr__(self, name):
            return lambda *a, **k: None

    class Module:
        def init(self, *args):
            return Runner()

        def __getattr__(self, name):
            return lambda *a, **k: None

    core.gen_cutlass_fused_moe_sm90_module = lambda *a, **k: types.SimpleNamespace(build_and_load=Module)
    core.get_compute_capability = lambda *a, **k: (9, 0)
    core.device_support_pdl = lambda *a, **k: False
    AutoTuner._profile_single_kernel = lambda self, runner, inputs, tactic, *a, **k: 1.0 + (7 * int(tactic) % 5)

    record = {"hits": 0, "lookups": 0}
    search = AutoTuner.search_cache

    def counted(self, *args, **kwargs):
        found = search(self, *args, **kwargs)
        record["lookups"] += 1
        record["hits"] += int(bool(found[0]))
        return found

    AutoTuner.search_cache = counted
    return record


def world_op(tp: int, ep: int, m_max: int):
    """The fused-MoE op as the warmer's plan gives it for this world (plan/flashinfer.py
    moe_call): without EP the experts' width is split over the ranks, with EP the experts."""
    from kernel_warmer.plan.flashinfer import MOE_OP, AutoTuneOp

    if ep > 1:
        return AutoTuneOp(MOE_OP, 2 * INTERMEDIATE, HIDDEN, m_max, "experts", mode="bf16", tp_size=1, ep_size=ep,
                          local_experts=EXPERTS // ep)
    return AutoTuneOp(MOE_OP, 2 * INTERMEDIATE // tp, HIDDEN, m_max, "experts", mode="bf16", tp_size=tp,
                      local_experts=EXPERTS)


def tune(root: Path, tp: int, ep: int, m_max: int) -> dict:
    import torch

    stand_in_for_the_gpu()
    from flashinfer.autotuner import _collect_metadata  # noqa: F401 - the env key reads it

    from kernel_warmer.flashinfer.tune import TUNE_FILE, current_env_key, tune_ops

    op = world_op(tp, ep, m_max)
    path = root / current_env_key() / TUNE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    moe = types.SimpleNamespace(num_experts=EXPERTS, experts_per_token=TOP_K)
    report = tune_ops([op], path, tp=tp * ep, arch_moe=moe, device=torch.device("cpu"),
                      log=lambda s: print(s, file=sys.stderr))
    doc = json.loads(path.read_text())
    return {"path": str(path), "tuned": len(report.tuned), "skipped": report.skipped,
            "coverage": report.coverage, "entries": sum(1 for k in doc if not k.startswith("_"))}


def serve(tp: int, ep: int, rank: int, m_max: int) -> dict:
    """One serving rank (sitecustomize is on PYTHONPATH: it loads on the first lookup)."""
    import torch

    record = stand_in_for_the_gpu()
    import flashinfer
    from flashinfer import autotuner

    tp_rank, ep_rank = (0, rank) if ep > 1 else (rank, 0)
    local = EXPERTS // ep
    w1 = torch.randn(local, 2 * INTERMEDIATE // tp, HIDDEN, dtype=torch.bfloat16)
    w2 = torch.randn(local, HIDDEN, INTERMEDIATE // tp, dtype=torch.bfloat16)
    m = 1
    while m <= m_max:
        x = torch.randn(m, HIDDEN, dtype=torch.bfloat16)
        ids = torch.randint(0, EXPERTS, (m, TOP_K), dtype=torch.int32)
        weights = torch.softmax(torch.randn(m, TOP_K), dim=-1)
        flashinfer.cutlass_fused_moe(input=x, token_selected_experts=ids, token_final_scales=weights,
                                     fc1_expert_weights=w1, fc2_expert_weights=w2, output_dtype=torch.bfloat16,
                                     quant_scales=[], tp_size=tp, tp_rank=tp_rank, ep_size=ep, ep_rank=ep_rank,
                                     output=torch.empty(m, HIDDEN, dtype=torch.bfloat16))
        m *= 2
    state = getattr(autotuner, "_kernel_warmup_state", {}) or {}
    return {**record, "loaded": state.get("loaded"), "rejected": {k: str(v) for k, v in
                                                                   (state.get("rejected") or {}).items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("tune", "serve"))
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--ep", type=int, default=1)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--m-max", type=int, default=64)
    a = ap.parse_args()
    if a.step == "tune":
        out = tune(a.root, a.tp, a.ep, a.m_max)
    else:
        os.environ["RANK"] = str(a.rank)  # the sitecustomize's rank when no vLLM groups exist
        out = serve(a.tp, a.ep, a.rank, a.m_max)
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
