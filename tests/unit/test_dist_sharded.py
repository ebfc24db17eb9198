"""Sharded FlashInfer tuning over gloo in several processes: every rank tunes a share,
rank 0 gathers, merges and broadcasts one file; a rank dying or stalling mid-share is named
and leaves no complete-looking file (issue 15)."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("torch.distributed")

from shard_jobs import ShardedJob

from kernel_warmer.flashinfer import tactics
from kernel_warmer.versions import MOE_KEY_PER_RANK, MOE_KEY_SHARED
from test_dist_share import run_pods


def flat(outcomes):
    return [o for i in sorted(outcomes) for o in outcomes[i]]


def the_file(root, node=0):
    return root / f"node{node}" / "env-test" / "autotune.json"


def test_four_ranks_tune_a_share_each_and_every_rank_gets_one_file(tmp_path):
    outs = flat(run_pods(ShardedJob(str(tmp_path)), pods=2, per_pod=2))
    assert all(o.ok for o in outs), [o.error for o in outs]
    results = [o.result for o in outs]
    assert {r["mode"] for r in results} == {"sharded"} and {r["warning"] for r in results} == {None}
    shares = results[0]["shares"]  # rank 0 saw every rank's report
    assert [s["rank"] for s in shares] == [0, 1, 2, 3]
    # one item per (op, shape, backend), all its buckets in one call: 2 GEMMs x 2 backends
    # + the MoE = 5 units >= 4 ranks, so nothing is cut into bucket ranges
    assert sum(s["items"] for s in shares) == 5 and all(s["items"] > 0 for s in shares)
    assert all(label.endswith(("M<=64", "M<=16")) for label in results[0]["items"]), results[0]["items"]
    data = the_file(tmp_path, 0).read_bytes()
    assert the_file(tmp_path, 1).read_bytes() == data  # each node's local rank 0 wrote it
    assert {g["sha_file"] for r in results for g in r["per_rank"]} == {results[0]["sha256"]}
    doc = json.loads(data)
    assert sum(1 for k in doc if not k.startswith("_")) == 28 + 5 * 4  # MoE entries under all 4 rank keys
    assert tactics.missing_moe_keys(doc, 4, 1, [(t, 0) for t in range(4)], MOE_KEY_PER_RANK) == []
    assert tactics.coverage_of(doc)["world_size"] == 4
    assert doc["_generation"] == tactics.generation(doc)


def test_the_bytes_do_not_depend_on_the_split(tmp_path):
    """World 2 and world 3 split the items differently; only the MoE world (in the keys and
    the coverage record) differs, so the GEMM entries must match byte for byte."""
    files = {}
    for world in (2, 3):
        root = tmp_path / f"w{world}"
        outs = flat(run_pods(ShardedJob(str(root)), pods=1, per_pod=world))
        assert all(o.ok for o in outs), [o.error for o in outs]
        files[world] = json.loads(the_file(root).read_text())
    gemm = [{k: v for k, v in d.items() if "bf16_gemm" in k} for d in files.values()]
    assert gemm[0] == gemm[1] and len(gemm[0]) == 28
    # and sharded == rank0 for the same world: the same file, byte for byte
    root = tmp_path / "rank0"
    outs = flat(run_pods(ShardedJob(str(root), tuning="rank0"), pods=1, per_pod=3))
    assert all(o.ok for o in outs), [o.error for o in outs]
    assert the_file(root).read_bytes() == the_file(tmp_path / "w3").read_bytes()


@pytest.mark.parametrize("world,shared", [(2, False), (3, False), (3, True)])
def test_a_moe_cut_into_bucket_ranges_gives_rank0s_bytes(tmp_path, world, shared):
    """One unit (the fused MoE, additive) and more ranks: it is cut into bucket ranges, one
    per rank; the merged file, MoE keys of every rank included, is rank0's byte for byte.
    In FlashInfer 0.7.2+'s format (``shared``) one key serves every rank: nothing is copied."""
    fmt = MOE_KEY_SHARED if shared else MOE_KEY_PER_RANK
    job = dict(moe_only=True, shared_moe_key=shared)
    outs = flat(run_pods(ShardedJob(str(tmp_path / "sharded"), **job), pods=1, per_pod=world))
    assert all(o.ok for o in outs), [o.error for o in outs]
    result = outs[0].result
    assert len(result["items"]) == world and all("moe M=" in label for label in result["items"]), result["items"]
    assert [s["items"] for s in result["shares"]] == [1] * world
    outs = flat(run_pods(ShardedJob(str(tmp_path / "rank0"), tuning="rank0", **job), pods=1, per_pod=world))
    assert all(o.ok for o in outs), [o.error for o in outs]
    data = the_file(tmp_path / "sharded").read_bytes()
    assert data == the_file(tmp_path / "rank0").read_bytes()
    doc = json.loads(data)
    # 5 buckets, under every rank's key where the key has the rank
    assert sum(1 for k in doc if not k.startswith("_")) == 5 * (1 if shared else world)
    assert tactics.missing_moe_keys(doc, world, 1, [(t, 0) for t in range(world)], fmt) == []
    assert tactics.coverage_of(doc)["worker_ranks"] == list(range(world))


def test_different_gpu_models_fall_back_to_rank0_on_every_rank(tmp_path):
    gpus = {0: "NVIDIA H100 80GB HBM3", 1: "NVIDIA H200"}
    outs = flat(run_pods(ShardedJob(str(tmp_path), gpus=gpus), pods=1, per_pod=2))
    assert all(o.ok for o in outs), [o.error for o in outs]
    for o in outs:
        assert o.result["mode"] == "rank0" and "NVIDIA H200: rank(s) [1]" in o.result["warning"]
        assert "shares" not in o.result
    assert tactics.has_moe_entries(json.loads(the_file(tmp_path).read_text()))


def assert_nothing_written(root):
    assert not list(root.rglob("autotune.json")) and not list(root.rglob("*.tmp"))


def test_a_rank_dying_mid_share_is_named_and_no_file_is_written(tmp_path):
    start = time.monotonic()
    outs = flat(run_pods(ShardedJob(str(tmp_path), die_rank=2), pods=1, per_pod=3, timeout_s=6))
    elapsed = time.monotonic() - start
    by_rank = {o.local_rank: o for o in outs}
    assert by_rank[2].exitcode == 3
    for r in (0, 1):
        assert not by_rank[r].ok
        assert "[2]" in by_rank[r].error, by_rank[r].error
    assert elapsed < 60, elapsed
    assert_nothing_written(tmp_path)


def test_a_rank_stalling_mid_share_is_named_within_the_produce_timeout(tmp_path):
    outs = flat(run_pods(ShardedJob(str(tmp_path), stall_rank=1, produce_timeout_s=3), pods=1, per_pod=3,
                         timeout_s=6))
    by_rank = {o.local_rank: o for o in outs}
    for r in (0, 2):
        assert not by_rank[r].ok
        assert "[1]" in by_rank[r].error and "within 3s" in by_rank[r].error, by_rank[r].error
    assert not by_rank[1].ok
    assert_nothing_written(tmp_path)
