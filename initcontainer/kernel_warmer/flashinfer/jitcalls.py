"""Compile what a non-autotuned FlashInfer op compiles on its first call, by calling it as
vLLM does (a child process on the warmer's GPU; ``python -m kernel_warmer.flashinfer.jitcalls
'<json list of JitCall dicts>'``).

FP8 block-scale dense layers on Hopper: vLLM 0.33 calls
``flashinfer.gemm.fp8_blockscale_gemm_sm90(input=<bf16 [M, K]>, weight=<fp8 [N, K]>,
weight_scale=<fp32 [N/128, K/128]>, out_dtype=torch.bfloat16)`` for M < 32
(vllm/model_executor/kernels/linear/scaled_mm/flashinfer.py:198-209, 256-264). FlashInfer
loads its ``fp8_blockscale_gemm_90`` module (built before this runs) and, per (N, K) and
the block config its heuristic picks for M, compiles a DeepGEMM kernel with nvcc into
``$TRTLLM_DG_CACHE_DIR/cache/<kernel>/`` (deep_gemm/compiler.cuh), which a later process
loads instead of compiling. One line of JSON per call on stdout: the progress.
"""

from __future__ import annotations

import json
import sys
import time

BLOCK = 128  # the checkpoint's weight_block_size, [128, 128] for the models this path serves


def run_calls(calls: list[dict]) -> None:
    import torch
    from flashinfer.gemm import fp8_blockscale_gemm_sm90

    dev = torch.device("cuda", 0)
    for i, call in enumerate(calls):
        start = time.monotonic()
        n, k = int(call["n"]), int(call["k"])
        weight = (torch.randn(n, k, device=dev) * 0.02).to(torch.float8_e4m3fn)
        scale = torch.ones(-(-n // BLOCK), k // BLOCK, device=dev, dtype=torch.float32)
        for m in call["m_values"]:
            x = torch.randn(int(m), k, device=dev, dtype=torch.bfloat16)
            fp8_blockscale_gemm_sm90(input=x, weight=weight, weight_scale=scale, out_dtype=torch.bfloat16)
        torch.cuda.synchronize()
        print(json.dumps({"call": i + 1, "of": len(calls), "op": call["op"], "n": n, "k": k,
                          "seconds": round(time.monotonic() - start, 3)}), flush=True)


if __name__ == "__main__":
    run_calls(json.loads(sys.argv[1]))
