"""The builtin Triton prefill-attention kernel and its launcher.

Packed variable-length batches (vLLM's layout): q is [tokens, heads, head_size], k and v are
[tokens, kv_heads, head_size]; sequence i occupies rows start[i] .. start[i] + len[i].
Causal, grouped-query (kv head = q head // group), a runtime scale, an optional logits
softcap, and a sliding window given as (q, k) the way vLLM passes it: a window of W tokens
is (W - 1, 0), no window is (-1, -1); a positive q-side bound keeps keys with
pos_q - pos_k <= window_q, a positive k-side bound keeps pos_k - pos_q <= window_k.

Everything that changes the compiled binary (dtype, head size, GQA group, window, softcap
on/off, block sizes) is derived from the variant alone, never from the GPU, so a
compile-only run for a target and a real launch on that GPU hit the same cache entry.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _prefill_attention_kernel(
    Q,
    K,
    V,
    Out,
    Start,
    SeqLen,
    sm_scale,
    softcap,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WINDOW_Q: tl.constexpr,
    WINDOW_K: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    m_block = tl.program_id(2)
    kv_head = head // GROUP

    seq_len = tl.load(SeqLen + seq)
    start = tl.load(Start + seq)
    m_start = m_block * BLOCK_M
    if m_start >= seq_len:
        return

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_SIZE
    m_ok = offs_m < seq_len

    q_ptrs = Q + (start + offs_m[:, None]).to(tl.int64) * stride_qt + head * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Causal: keys up to the block's last query. Window: keys from its first query's reach.
    hi = tl.minimum(seq_len, m_start + BLOCK_M)
    lo = 0
    if WINDOW_Q > 0:
        lo = tl.maximum(0, m_start - WINDOW_Q)
        lo = (lo // BLOCK_N) * BLOCK_N
    for n_start in range(lo, hi, BLOCK_N):
        n_start = tl.multiple_of(n_start, BLOCK_N)
        pos_k = n_start + offs_n
        n_ok = pos_k < seq_len
        k_ptrs = K + (start + pos_k[None, :]).to(tl.int64) * stride_kt + kv_head * stride_kh + offs_d[:, None]
        k = tl.load(k_ptrs, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        s = tl.dot(q, k) * sm_scale
        if USE_SOFTCAP:
            # softcap * tanh(s / softcap), written with exp so it needs no libdevice
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
        keep = n_ok[None, :] & (offs_m[:, None] >= pos_k[None, :])
        if WINDOW_Q > 0:
            keep = keep & (offs_m[:, None] - pos_k[None, :] <= WINDOW_Q)
        if WINDOW_K > 0:
            keep = keep & (pos_k[None, :] - offs_m[:, None] <= WINDOW_K)
        s = tl.where(keep, s * 1.4426950408889634, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # rows with nothing kept yet keep m at -inf; shift by 0 there to avoid inf - inf
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v_ptrs = V + (start + pos_k[:, None]).to(tl.int64) * stride_vt + kv_head * stride_vh + offs_d[None, :]
        v = tl.load(v_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new

    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    o_ptrs = Out + (start + offs_m[:, None]).to(tl.int64) * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def launch_config(head_size: int, dtype_name: str) -> dict:
    """Block sizes and warps: a pure function of the variant (see the module docstring)."""
    if dtype_name == "float32":
        block_m, block_n = 32, 32
    elif head_size <= 128:
        block_m, block_n = 128, 64
    else:
        block_m, block_n = 64, 32
    return {
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_D": max(16, triton.next_power_of_2(head_size)),
        "num_warps": 4 if head_size <= 64 else 8,
        "num_stages": 1,
    }


def kernel_args(q, k, v, o, b_start_loc, b_seq_len, scale, softcap, sliding_window, strides=None):
    """Positional args and constexpr kwargs for one launch (shared by run and warmup).

    ``strides``: ((qt, qh), (kt, kh), (vt, vh), (ot, oh)); read from the tensors if None
    (compile-only passes them because its stand-in tensors have no real layout).
    """
    num_heads, head_size = q.shape[1], q.shape[2]
    num_kv_heads = k.shape[1]
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if strides is None:
        strides = tuple((t.stride(0), t.stride(1)) for t in (q, k, v, o))
    window_q, window_k = sliding_window
    dtype_name = str(q.dtype).replace("torch.", "")
    cfg = launch_config(head_size, dtype_name)
    args = (
        q, k, v, o, b_start_loc, b_seq_len, float(scale), float(softcap) if softcap else 1.0,
        *strides[0], *strides[1], *strides[2], *strides[3],
    )
    kwargs = dict(
        GROUP=num_heads // num_kv_heads,
        HEAD_SIZE=head_size,
        WINDOW_Q=int(window_q) if window_q and window_q > 0 else 0,
        WINDOW_K=int(window_k) if window_k and window_k > 0 else 0,
        USE_SOFTCAP=bool(softcap),
        **cfg,
    )
    return args, kwargs


def prefill_attention(
    q,
    k,
    v,
    o,
    b_start_loc,
    b_seq_len,
    max_input_len: int,
    scale: float | None = None,
    softcap: float = 0.0,
    sliding_window: tuple[int, int] = (-1, -1),
):
    """Run the kernel: o[...] = causal attention of q over k, v for each packed sequence."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    args, kwargs = kernel_args(q, k, v, o, b_start_loc, b_seq_len, scale, softcap, sliding_window)
    grid = (b_seq_len.shape[0], q.shape[1], math.ceil(max_input_len / kwargs["BLOCK_M"]))
    _prefill_attention_kernel[grid](*args, **kwargs)
    return o
