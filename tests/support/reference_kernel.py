"""PyTorch reference for the prefill-attention kernel: SDPA per sequence with an explicit
mask, so window and softcap semantics are spelled out once, independently of Triton."""

from __future__ import annotations

import torch


def reference_prefill_attention(q, k, v, b_start_loc, b_seq_len, scale, softcap=0.0, sliding_window=(-1, -1)):
    """Same contract as ``prefill_attention``; returns a new tensor, computed in float32."""
    out = torch.zeros_like(q, dtype=torch.float32)
    group = q.shape[1] // k.shape[1]
    wq, wk = sliding_window
    for start, length in zip(b_start_loc.tolist(), b_seq_len.tolist()):
        if length == 0:
            continue
        sl = slice(start, start + length)
        qs = q[sl].float().transpose(0, 1)  # [H, L, D]
        ks = k[sl].float().repeat_interleave(group, dim=1).transpose(0, 1)
        vs = v[sl].float().repeat_interleave(group, dim=1).transpose(0, 1)
        pos = torch.arange(length, device=q.device)
        diff = pos[:, None] - pos[None, :]  # pos_q - pos_k
        keep = diff >= 0
        if wq > 0:
            keep &= diff <= wq
        if wk > 0:
            keep &= -diff <= wk
        if softcap:
            s = torch.einsum("hqd,hkd->hqk", qs, ks) * scale
            s = softcap * torch.tanh(s / softcap)
            s = s.masked_fill(~keep, float("-inf"))
            o = torch.softmax(s, dim=-1) @ vs
        else:
            o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=keep, scale=scale)
        out[sl] = o.transpose(0, 1)
    return out


def random_ragged_batch(lengths, num_heads, num_kv_heads, head_size, dtype, device, seed=0):
    """Packed q, k, v and int32 start/length tensors for the given sequence lengths."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    total = sum(lengths)
    shape_q, shape_kv = (total, num_heads, head_size), (total, num_kv_heads, head_size)
    q = torch.randn(shape_q, generator=g).to(dtype=dtype, device=device)
    k = torch.randn(shape_kv, generator=g).to(dtype=dtype, device=device)
    v = torch.randn(shape_kv, generator=g).to(dtype=dtype, device=device)
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    b_start = torch.tensor(starts, dtype=torch.int32, device=device)
    b_len = torch.tensor(list(lengths), dtype=torch.int32, device=device)
    return q, k, v, b_start, b_len
