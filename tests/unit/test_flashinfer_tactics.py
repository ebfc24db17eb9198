"""Fused-MoE tactics written under every rank's key, against a file built the way FlashInfer
0.6.18 saves one (autotuner.py save_configs; keys are ProfilingCacheKey.file_key), and the
0.7.2+ format whose one key serves every rank. The same, on keys that the real autotuner of
each FlashInfer release writes, is tests/unit/test_flashinfer_keys_real.py."""

from __future__ import annotations

import hashlib
import json

import pytest

from kernel_warmer.flashinfer import tactics
from kernel_warmer.flashinfer.tune import _variants, cover_ranks
from kernel_warmer.plan.flashinfer import AutoTuneOp
from kernel_warmer.versions import MOE_KEY_PER_RANK as PER_RANK
from kernel_warmer.versions import MOE_KEY_SHARED as SHARED

torch = pytest.importorskip("torch")  # dtypes print as FlashInfer's keys print them

SWIGLU = 3  # flashinfer/tllm_enums.py ActivationType.Swiglu


def moe_extras(tp_size, tp_rank, ep_size=1, ep_rank=0):
    """MoERunner.get_cache_key_extras (fused_moe/core.py:707-736), bf16, top-k 8."""
    bf16 = torch.bfloat16
    return (bf16, bf16, bf16, 8, tp_size, tp_rank, ep_size, ep_rank, 1, 0, False, False, False, False, False,
            False, False, SWIGLU, False, True)


def file_key(op, profile, extras, runner="MoERunner"):
    return str((op, runner, profile, extras))  # ProfilingCacheKey.file_key


def profile(m):
    return ((m, 2048), (128, 768, 2048), (0,), (128, 2048, 384), (0,))


def save_like_flashinfer(path, entries):
    """What save_configs writes: _metadata first, sorted entries, _generation last."""
    ordered = {"_metadata": {"flashinfer_version": "0.6.18", "gpu": "NVIDIA H200"}}
    for k in sorted(entries):
        ordered[k] = entries[k]
    ordered["_generation"] = hashlib.sha256(
        json.dumps(ordered, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    path.write_text(json.dumps(ordered, indent=2))


GEMM_KEY = file_key("bf16_gemm", ((64, 2048), (2048, 768)), (), runner="CudnnRunner")
MOE_OP = AutoTuneOp("cutlass_fused_moe", 768, 2048, 64, "experts", mode="bf16", tp_size=2, local_experts=128)


@pytest.fixture()
def tuned_file(tmp_path):
    """Rank 0's tuning: gemm1 + gemm2 at M = 1 .. 64, plus one GEMM entry."""
    entries = {GEMM_KEY: ["CudnnRunner", [[1, 2], 0]]}
    for m in (1, 2, 4, 8, 16, 32, 64):
        for op, tactic in (("trtllm::fused_moe::gemm1", m), ("trtllm::fused_moe::gemm2", 100 + m)):
            entries[file_key(op, profile(m), moe_extras(2, 0))] = ["MoERunner", tactic]
    path = tmp_path / "autotune.json"
    save_like_flashinfer(path, entries)
    return path


def test_rekey_changes_only_the_two_rank_integers():
    key = file_key("trtllm::fused_moe::gemm1", profile(8), moe_extras(2, 0, 1, 0))
    assert tactics.rank_of(key, PER_RANK) == (2, 0, 1, 0)
    moved = tactics.rekey(key, 1, 0, PER_RANK)
    assert moved == file_key("trtllm::fused_moe::gemm1", profile(8), moe_extras(2, 1, 1, 0))
    ep = file_key("trtllm::fused_moe::gemm2", profile(8), moe_extras(1, 0, 4, 0))
    assert tactics.rekey(ep, 0, 3, PER_RANK) == file_key("trtllm::fused_moe::gemm2", profile(8), moe_extras(1, 0, 4, 3))
    assert tactics.rank_of(GEMM_KEY, PER_RANK) is None


def test_a_changed_key_layout_is_named_not_guessed():
    key = file_key("trtllm::fused_moe::gemm1", profile(8), (torch.bfloat16, "tp", 0))
    with pytest.raises(tactics.TacticFileError, match="writes another key layout"):
        tactics.rank_of(key, PER_RANK)


def test_moe_is_tuned_for_one_rank_key():
    (label, _fn), = _variants(MOE_OP, {}, None, None)
    assert label == "tp_rank=0 ep_rank=0, written for 2 rank(s)"


def test_cover_ranks_writes_every_rank_and_the_world(tuned_file):
    before = json.loads(tuned_file.read_text())
    tuned = [{**MOE_OP.to_dict(), "variant": "tp_rank=0 ep_rank=0"}]
    coverage = cover_ranks(tuned_file, [MOE_OP], tuned, tp=2, fmt=PER_RANK)
    doc = json.loads(tuned_file.read_text())
    assert coverage["worker_ranks"] == [0, 1] and coverage["rank_keys"] == [[0, 0], [1, 0]]
    assert tactics.coverage_of(doc) == coverage
    # rank 1 finds exactly rank 0's tactics under its own keys, for both GEMMs of every bucket
    for m in (1, 2, 4, 8, 16, 32, 64):
        for op in ("trtllm::fused_moe::gemm1", "trtllm::fused_moe::gemm2"):
            rank0 = doc[file_key(op, profile(m), moe_extras(2, 0))]
            assert doc[file_key(op, profile(m), moe_extras(2, 1))] == rank0
    assert tactics.missing_moe_keys(doc, 2, 1, [(0, 0), (1, 0)], PER_RANK) == []
    # what was there is untouched; metadata first, generation recomputed as FlashInfer does
    assert all(doc[k] == v for k, v in before.items() if k != "_generation")
    assert list(doc)[0] == "_metadata" and list(doc)[-1] == "_generation"
    assert doc["_generation"] == tactics.generation(doc) != before["_generation"]
    assert len([k for k in doc if not k.startswith("_")]) == 1 + 2 * 14


def test_a_rank_left_uncovered_fails_instead_of_writing_a_partial_file(tmp_path):
    path = tmp_path / "autotune.json"  # tuned for a 4-rank world, planned for 2: no rank-0 key of this world
    save_like_flashinfer(path, {file_key("trtllm::fused_moe::gemm1", profile(1), moe_extras(4, 0)): ["MoERunner", 1]})
    with pytest.raises(RuntimeError, match=r"no entry for \(tp_rank, ep_rank\) \[\(0, 0\), \(1, 0\)\]"):
        cover_ranks(path, [MOE_OP], [MOE_OP.to_dict()], tp=2, fmt=PER_RANK)


def test_gemm_only_file_covers_every_rank_of_the_tp_world(tmp_path):
    path = tmp_path / "autotune.json"
    save_like_flashinfer(path, {GEMM_KEY: ["CudnnRunner", 0]})
    gemm = AutoTuneOp("bf16_gemm", 768, 2048, 64, "qkv")
    cov = cover_ranks(path, [gemm], [gemm.to_dict()], tp=4, fmt=PER_RANK)
    assert cov["worker_ranks"] == [0, 1, 2, 3] and cov["rank_keys"] == [] and cov["ops"] == ["bf16_gemm"]


def shared_extras(tp_size, ep_size=1):
    """FlashInfer 0.7.2+'s MoERunner.get_cache_key_extras (fused_moe/core.py:758-780): no ranks."""
    bf16 = torch.bfloat16
    return (bf16, bf16, bf16, 8, tp_size, ep_size, 1, False, False, False, False, False, False, False, SWIGLU,
            False, True)


def test_shared_format_keys_serve_every_rank_without_copies(tmp_path):
    path = tmp_path / "autotune.json"
    entries = {file_key(op, profile(m), shared_extras(2)): ["MoERunner", m]
               for m in (1, 2, 4) for op in tactics.MOE_CUSTOM_OPS}
    save_like_flashinfer(path, entries)
    key = next(iter(entries))
    assert tactics.rank_of(key, SHARED) == (2, None, 1, None)
    assert tactics.rekey(key, 1, 0, SHARED) == key
    cov = cover_ranks(path, [MOE_OP], [MOE_OP.to_dict()], tp=2, fmt=SHARED)
    doc = json.loads(path.read_text())
    assert {k: v for k, v in doc.items() if not k.startswith("_")} == entries  # nothing added
    assert cov["worker_ranks"] == [0, 1] and cov["moe"][0]["key_format"] == SHARED.name
    assert tactics.missing_moe_keys(doc, 2, 1, [(0, 0), (1, 0)], SHARED) == []
    assert tactics.missing_moe_keys(doc, 4, 1, [(0, 0)], SHARED) == [(0, 0)]  # another world: not covered


@pytest.mark.parametrize("written,read", [(PER_RANK, SHARED), (SHARED, PER_RANK)])
def test_a_key_of_the_other_format_is_named_not_misread(written, read):
    extras = moe_extras(2, 0) if written is PER_RANK else shared_extras(2)
    key = file_key("trtllm::fused_moe::gemm1", profile(8), extras)
    with pytest.raises(tactics.TacticFileError, match=f"not the {read.length} of FlashInfer's"):
        tactics.rank_of(key, read)
