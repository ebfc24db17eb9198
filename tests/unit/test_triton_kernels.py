"""The builtin kernel against the PyTorch reference under Triton's interpreter (CPU):
ragged lengths, GQA, windows, softcap, a non-power-of-two head size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")
np = pytest.importorskip("numpy", reason="Triton's interpreter needs numpy")
if tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4):
    pytest.skip("triton 3.6's interpreter breaks on numpy >= 2.4 (int() of 1-element arrays); pin numpy<2.4",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import torch
from kernel_warmer.triton.kernels.prefill_attention import prefill_attention
from support.reference_kernel import random_ragged_batch, reference_prefill_attention
cases = [
    # heads, kv heads, head size, scale, window (q, k), softcap
    (4, 2, 64, None, (-1, -1), 0.0),
    (4, 1, 80, 0.1, (5, 0), 0.0),
    (2, 2, 32, None, (-1, -1), 30.0),
    (2, 1, 64, 256 ** -0.5, (3, 0), 20.0),
    (2, 1, 32, None, (40, 0), 0.0),
]
lengths = [7, 1, 70, 19]
worst = 0.0
for i, (h, kv, d, scale, win, cap) in enumerate(cases):
    q, k, v, bs, bl = random_ragged_batch(lengths, h, kv, d, torch.float32, "cpu", seed=i)
    o = torch.full_like(q, float("nan"))
    sc = scale or d ** -0.5
    prefill_attention(q, k, v, o, bs, bl, max(lengths), scale=sc, softcap=cap, sliding_window=win)
    ref = reference_prefill_attention(q, k, v, bs, bl, sc, cap, win)
    err = (o - ref).abs().max().item()
    assert err < 1e-4, (i, err)
    worst = max(worst, err)
print("OK", worst)
"""


def test_kernel_matches_reference_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(ROOT / "initcontainer"), str(ROOT / "tests")]))
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-3000:]


def test_reference_window_semantics_match_vllm_convention():
    """(W-1, 0) keeps exactly W keys (the query itself and W-1 before it)."""
    import torch
    from support.reference_kernel import reference_prefill_attention

    L, W = 6, 3
    q = torch.zeros(L, 1, 16)
    k = torch.zeros(L, 1, 16)
    v = torch.arange(L, dtype=torch.float32)[:, None, None].expand(L, 1, 16).contiguous()
    out = reference_prefill_attention(q, k, v, torch.tensor([0]), torch.tensor([L]), 1.0, 0.0, (W - 1, 0))
    # uniform weights over the kept keys: mean of positions max(0, i-W+1) .. i
    expect = torch.tensor([sum(range(max(0, i - W + 1), i + 1)) / (i + 1 - max(0, i - W + 1)) for i in range(L)])
    assert torch.allclose(out[:, 0, 0], expect)
