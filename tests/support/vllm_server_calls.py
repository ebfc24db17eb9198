"""A fresh "server" process: calls vLLM's own ``context_attention_fwd`` the way vLLM's call
sites do, and counts what Triton had to compile.

Each call is described by what the server's model code constructs (heads per rank, head
size, the impl's window tuple or None, causality, scale, dtype); the arguments are built
here from vLLM 0.33.0's call sites, not from the warmer:

- ``encoder``: ``TritonAttentionImpl._forward_encoder_attention``
  (vllm/v1/attention/backends/triton_attn.py:782-795). The impl's tuple is ``(-1, -1)``
  without a window and ``(W-1, W-1)`` for an encoder layer with window W (:503-508); q, k
  and v are views of the layer's fused qkv projection (as ``Attention.forward`` gets them).
- ``vit``: ``triton_attn_wrapper`` (vllm/v1/attention/ops/vit_attn_wrappers.py:162-201):
  ``b_start_loc=cu_seqlens[:-1]``, ``b_seq_len=cu_seqlens[1:] - cu_seqlens[:-1]``,
  ``is_causal=False``, both windows ``None``, ``softmax_scale=scale``.
- ``fork``: the decoder prefill call of the fork this project's seed came from: the raw
  decoder tuple ``(W-1, 0)`` / ``(-1, -1)`` as triton_attn.py passes it, causal.

    python tests/support/vllm_server_calls.py CALLS.json  -> one JSON line on stdout
"""

from __future__ import annotations

import json
import sys
import time


def _listen():
    from triton import knobs

    events = []
    knobs.compilation.listener = lambda *, src, metadata, metadata_group, times, cache_hit: events.append(cache_hit)
    return events


def _window(call: dict):
    """What the call site passes as (sliding_window_q, sliding_window_k)."""
    w = call.get("window")
    if call["site"] == "vit":
        return None, None
    if w is None:
        return -1, -1
    return (w - 1, w - 1) if call["site"] == "encoder" else (w - 1, 0)


def _inputs(call: dict, lengths: list[int]):
    import torch

    dt = getattr(torch, call["dtype"])
    h, kv, d = call["heads"], call["kv_heads"], call["head_size"]
    total = sum(lengths)
    qkv = torch.randn(total, (h + 2 * kv) * d, device="cuda", dtype=dt)
    q, k, v = qkv.split([h * d, kv * d, kv * d], dim=-1)
    q, k, v = q.view(-1, h, d), k.view(-1, kv, d), v.view(-1, kv, d)
    if call["site"] == "vit":  # the wrapper rearranges (b s) h d into fresh tensors
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device="cuda")
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32, device="cuda"), 0)
    return q, k, v, cu


def _reference(q, k, v, cu, call: dict):
    """torch SDPA per sequence, with the site's causal and window masks."""
    import torch

    out = torch.empty_like(q)
    wq, wk = _window(call)
    for i in range(cu.numel() - 1):
        s, e = int(cu[i]), int(cu[i + 1])
        n = e - s
        pos = torch.arange(n, device="cuda")
        diff = pos[:, None] - pos[None, :]  # q - k
        mask = torch.ones(n, n, dtype=torch.bool, device="cuda")
        if call["causal"]:
            mask &= diff >= 0
        if wq is not None and wq > 0:
            mask &= diff <= wq
        if wk is not None and wk > 0:
            mask &= -diff <= wk
        rep = q.shape[1] // k.shape[1]
        qs, ks, vs = (t[s:e].transpose(0, 1).float() for t in (q, k, v))
        ks, vs = ks.repeat_interleave(rep, 0), vs.repeat_interleave(rep, 0)
        o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=call["scale"])
        out[s:e] = o.transpose(0, 1).to(q.dtype)
    return out


def run_call(fn, call: dict, lengths: list[int]) -> float:
    import torch

    q, k, v, cu = _inputs(call, lengths)
    out = torch.empty_like(q)
    wq, wk = _window(call)
    if call["site"] == "vit":
        fn(q, k, v, out, b_start_loc=cu[:-1], b_seq_len=cu[1:] - cu[:-1], max_input_len=max(lengths),
           is_causal=False, sliding_window_q=None, sliding_window_k=None, softmax_scale=call["scale"])
    else:
        fn(q=q, k=k, v=v, o=out, b_start_loc=cu, b_seq_len=cu[1:] - cu[:-1], max_input_len=max(lengths),
           is_causal=call["causal"], softmax_scale=call["scale"], sliding_window_q=wq, sliding_window_k=wk,
           **({"sinks": None} if call["site"] == "encoder" else {}))
    torch.cuda.synchronize()
    return float((out.float() - _reference(q, k, v, cu, call).float()).abs().max())


def main() -> int:
    calls = json.load(open(sys.argv[1]))
    import torch

    torch.cuda.init()
    from vllm.v1.attention.ops.triton_prefill_attention import context_attention_fwd

    events = _listen()
    results = []
    batches = ([37, 5, 130], [1, 64, 16, 200])  # ragged, and longer than any window above
    for call in calls:
        before = len(events)
        t0 = time.perf_counter()
        err = run_call(context_attention_fwd, call, list(batches[0]))
        first_ms = (time.perf_counter() - t0) * 1000
        err = max(err, run_call(context_attention_fwd, call, list(batches[1])))
        new = events[before:]
        results.append({"call": call, "compiled": sum(1 for hit in new if not hit),
                        "hits": sum(1 for hit in new if hit), "first_call_ms": round(first_ms, 2),
                        "max_abs_err": err})
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
