"""Rank, world size and master address from the pod's environment (pure, by table)."""

from __future__ import annotations

import pytest

from kernel_warmer.dist.world import WorldError, derive_world
from kernel_warmer.spec import DistributedSection

LWS = {"LWS_LEADER_ADDRESS": "grp-0.grp.ns", "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "1"}


@pytest.mark.parametrize("env,spec,local_n,local_r,expect", [
    # single pod, 1 or 4 GPUs
    ({}, None, 1, 0, dict(rank=0, world_size=1, node_rank=0, num_nodes=1, master_addr="127.0.0.1", master_port=29551, source="single-pod")),
    ({}, None, 4, 3, dict(rank=3, world_size=4, local_rank=3, source="single-pod")),
    # LeaderWorkerSet: 2 pods x 4 GPUs, this is pod 1
    (LWS, None, 4, 2, dict(rank=6, world_size=8, node_rank=1, num_nodes=2, master_addr="grp-0.grp.ns", source="lws")),
    # explicit variables win over LWS, MASTER_PORT over the spec's default port
    ({**LWS, "WORLD_SIZE": "3", "RANK": "2", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "1234"}, None, 2, 1,
     dict(rank=5, world_size=6, node_rank=2, num_nodes=3, master_addr="10.0.0.5", master_port=1234, source="env")),
    # spec fields win over everything; unset spec fields fall through per field
    (LWS, DistributedSection(world_size=4, rank=3, master_port=4000), 1, 0,
     dict(rank=3, world_size=4, master_addr="grp-0.grp.ns", master_port=4000, source="spec")),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "m"}, DistributedSection(master_addr="spec-host"), 8, 0,
     dict(rank=0, world_size=16, master_addr="spec-host", source="env")),
    # a world of one pod needs no master address
    ({"WORLD_SIZE": "1", "RANK": "0"}, None, 2, 1, dict(rank=1, world_size=2, master_addr="127.0.0.1")),
])
def test_world_table(env, spec, local_n, local_r, expect):
    w = derive_world(env, spec, local_n, local_r)
    for k, v in expect.items():
        assert getattr(w, k) == v, (k, w)
    assert w.local_world_size == local_n and w.local_rank == local_r


@pytest.mark.parametrize("env,spec,local_n,match", [
    ({"WORLD_SIZE": "two", "RANK": "0"}, None, 1, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2"}, None, 1, "rank is not"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "m"}, None, 1, r"pod rank 2 outside \[0, 2\)"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, None, 1, "distributed.masterAddr"),
    ({}, None, 0, "is a GPU visible"),
    ({"MASTER_PORT": "70000"}, None, 1, "port 70000"),
])
def test_bad_environments_name_the_variable(env, spec, local_n, match):
    with pytest.raises(WorldError, match=match):
        derive_world(env, spec, local_n, 0)
