"""Measure what a serving process would see: in a fresh process pointed at a cache, run each
variant once ("first call") and then a few more times ("steady state"), counting Triton
compiles that missed the disk cache. The GPU tests and the benchmark use it; it also helps
debug a cache that should be warm but is not.

    python -m kernel_warmer.probe --variants plan.json [--tokens 4096 --seqs 8] [--provider builtin]

``plan.json``: the output of `kernel-warmer plan --json` (or a list of variant dicts).
TRITON_CACHE_DIR must already point at the cache. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from kernel_warmer.plan.triton import TritonVariant


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernel_warmer.probe")
    ap.add_argument("--variants", required=True)
    ap.add_argument("--provider", default="builtin", choices=["builtin", "vllm"])
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per sequence")
    ap.add_argument("--steady", type=int, default=5)
    args = ap.parse_args(argv)
    doc = json.loads(open(args.variants).read())
    raw = doc["triton_variants"] if isinstance(doc, dict) else doc
    variants = [TritonVariant.from_dict(d) for d in raw]

    t0 = time.perf_counter()
    import torch
    from triton import knobs
    from triton.runtime.driver import driver

    from kernel_warmer.triton import providers

    torch.ones(1, device="cuda").sum().item()  # CUDA context: paid once per process, not per variant
    driver.active.get_current_target()  # Triton's driver helper module
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _warm_triton_runtime(args.provider)
    triton_init_s = time.perf_counter() - t0

    events: list[bool] = []
    knobs.compilation.listener = lambda **kw: events.append(bool(kw["cache_hit"]))
    prov = providers.get(args.provider)
    out = []
    for v in variants:
        dt = providers._torch_dtype(v.dtype)
        n = args.seqs * args.tokens
        q = torch.randn(n, v.num_heads, v.head_size, device="cuda", dtype=dt)
        k = torch.randn(n, v.num_kv_heads, v.head_size, device="cuda", dtype=dt)
        val = torch.randn(n, v.num_kv_heads, v.head_size, device="cuda", dtype=dt)
        o = torch.empty_like(q)
        b_start = torch.arange(0, n, args.tokens, dtype=torch.int32, device="cuda")
        b_len = torch.full((args.seqs,), args.tokens, dtype=torch.int32, device="cuda")
        call = _caller(prov, v, q, k, val, o, b_start, b_len, args.tokens)
        torch.cuda.synchronize()
        events.clear()
        t = time.perf_counter()
        call()
        torch.cuda.synchronize()
        first = time.perf_counter() - t
        compiles = sum(1 for hit in events if not hit)
        hits = sum(1 for hit in events if hit)
        times = []
        for _ in range(args.steady):
            t = time.perf_counter()
            call()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        steady = statistics.median(times)
        out.append({"variant": v.label, "first_s": first, "steady_s": steady, "ratio": first / steady,
                    "compiles": compiles, "disk_hits": hits})
        del q, k, val, o
    print(json.dumps({"process_init_s": init_s, "triton_runtime_init_s": triton_init_s, "variants": out}))
    return 0


def _warm_triton_runtime(provider: str) -> None:
    """Pay Triton's once-per-process costs before timing any variant.

    The first Triton launch in a process hashes Triton's own install (triton_key), asks
    ptxas for its version, builds the backend and loads the launcher/driver helper
    modules; the first launch of a given @jit function also hashes its source. None of
    that depends on the variant or is avoidable by a cache, so it is measured apart
    (``triton_runtime_init_s``) instead of being charged to whichever variant runs first.
    """
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def _touch(x_ptr):
        tl.store(x_ptr, tl.load(x_ptr) + 1)

    x = torch.zeros(1, device="cuda")
    _touch[(1,)](x)
    torch.cuda.synchronize()
    if provider == "builtin":
        from kernel_warmer.triton.kernels.prefill_attention import (
            _prefill_attention_kernel as fn,
        )

        fn.cache_key  # noqa: B018 - the per-function source hash, computed once per process
        fn.device_caches[torch.cuda.current_device()]


def _caller(prov, v, q, k, val, o, b_start, b_len, max_len):
    if prov.name == "builtin":
        from kernel_warmer.triton.kernels.prefill_attention import prefill_attention

        return lambda: prefill_attention(q, k, val, o, b_start, b_len, max_len, scale=v.scale,
                                          softcap=v.softcap, sliding_window=v.sliding_window)
    from kernel_warmer.triton import providers

    fn = prov._fn()
    kw = providers.accepted_kwargs(fn, {
        "is_causal": True, "softmax_scale": v.scale,
        "sliding_window_q": v.sliding_window[0] if v.sliding_window[0] >= 0 else None,
        "sliding_window_k": v.sliding_window[1] if v.sliding_window[1] >= 0 else None})
    return lambda: fn(q, k, val, o, b_start, b_len, max_len, **kw)


if __name__ == "__main__":
    sys.exit(main())
