"""Who am I: the rank and world derived from the pod's environment (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from kernel_warmer.spec import DistributedSection

# Exit code of a worker whose watchdog fired (the collective it was in cannot be unblocked).
WATCHDOG_EXIT = 86


class WorldError(RuntimeError):
    """A rank is missing, dead, or disagrees; ``ranks`` names the culprits."""

    def __init__(self, message: str, ranks: tuple[int, ...] = ()):
        self.ranks = ranks
        super().__init__(message)


@dataclass(frozen=True)
class WorldInfo:
    """One worker's place in the world.

    A *node* is a pod: each pod spawns ``local_world_size`` workers (its visible GPUs),
    so ``world_size = num_nodes * local_world_size`` and every pod must see the same GPU
    count (LeaderWorkerSet pods share one template). ``num_nodes``/``node_rank`` come, per
    field, from the spec (``distributed.worldSize``/``rank``, counted in pods), else from
    ``WORLD_SIZE``/``RANK`` (one entry per pod, as Kubeflow's PyTorchJob sets them), else
    from LeaderWorkerSet's ``LWS_GROUP_SIZE``/``LWS_WORKER_INDEX``, else a single pod.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    source: str  # where num_nodes/node_rank came from: "spec" | "env" | "lws" | "single-pod"


def _env_int(env: Mapping[str, str], name: str) -> Optional[int]:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise WorldError(f"environment variable {name}={raw!r} is not an integer") from None


def derive_world(
    env: Mapping[str, str],
    spec: Optional[DistributedSection],
    local_world_size: int,
    local_rank: int = 0,
) -> WorldInfo:
    """Rank, world size and master address of one worker, from env and spec (pure)."""
    spec = spec or DistributedSection()
    if local_world_size < 1:
        raise WorldError(f"no workers in this pod (local_world_size={local_world_size}); is a GPU visible?")
    if not 0 <= local_rank < local_world_size:
        raise WorldError(f"local_rank {local_rank} outside [0, {local_world_size})")

    candidates = [
        ("spec", spec.world_size, spec.rank, spec.master_addr, "distributed.worldSize/distributed.rank"),
        ("env", _env_int(env, "WORLD_SIZE"), _env_int(env, "RANK"), env.get("MASTER_ADDR") or None, "WORLD_SIZE/RANK"),
        ("lws", _env_int(env, "LWS_GROUP_SIZE"), _env_int(env, "LWS_WORKER_INDEX"),
         env.get("LWS_LEADER_ADDRESS") or None, "LWS_GROUP_SIZE/LWS_WORKER_INDEX"),
    ]
    num_nodes = node_rank = master = None
    source = "single-pod"
    for name, size, rank, addr, fields in candidates:
        if num_nodes is None and size is not None:
            num_nodes, source = size, name
            if rank is None and size > 1:
                raise WorldError(f"{fields}: world size {size} is set but this pod's rank is not")
        if node_rank is None and rank is not None and num_nodes is not None:
            node_rank = rank
        if master is None and addr:
            master = addr
    num_nodes = 1 if num_nodes is None else num_nodes
    node_rank = 0 if node_rank is None else node_rank
    if num_nodes < 1:
        raise WorldError(f"world size must be >= 1, got {num_nodes} (from {source})")
    if not 0 <= node_rank < num_nodes:
        raise WorldError(f"pod rank {node_rank} outside [0, {num_nodes}) (from {source})")
    if master is None:
        if num_nodes > 1:
            raise WorldError(
                f"{num_nodes} pods but no master address: set distributed.masterAddr, MASTER_ADDR "
                "or run under a LeaderWorkerSet (LWS_LEADER_ADDRESS)"
            )
        master = "127.0.0.1"
    port = _env_int(env, "MASTER_PORT")
    port = spec.master_port if port is None else port
    if not 0 < port < 65536:
        raise WorldError(f"master port {port} out of range")
    return WorldInfo(
        rank=node_rank * local_world_size + local_rank,
        world_size=num_nodes * local_world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        node_rank=node_rank,
        num_nodes=num_nodes,
        master_addr=master,
        master_port=port,
        source=source,
    )
