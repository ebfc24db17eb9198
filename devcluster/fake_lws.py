"""What the LeaderWorkerSet controller and its Pod webhook would create for one group.

The local control plane serves the LeaderWorkerSet CRD (crds/) but runs no LWS controller,
so the tests create a group's Pods themselves: the leader from ``leaderTemplate`` (or
``workerTemplate`` when there is none) and ``size - 1`` workers from ``workerTemplate``,
with the labels and the ``LWS_*`` variables LWS puts into every container, init
containers included. Owned by the LeaderWorkerSet itself (the real controller goes through
StatefulSets); no kubelet runs them.
"""

from __future__ import annotations

import copy

NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"


def leader_address(lws: dict, group: int) -> str:
    """``<lws>-<group>.<lws>.<namespace>``: the leader Pod's name under the LWS's headless Service."""
    meta = lws["metadata"]
    return f"{meta['name']}-{group}.{meta['name']}.{meta['namespace']}"


def lws_env(lws: dict, group: int, worker: int) -> list[dict]:
    size = lws["spec"]["leaderWorkerTemplate"].get("size", 1)
    return [{"name": "LWS_LEADER_ADDRESS", "value": leader_address(lws, group)},
            {"name": "LWS_GROUP_SIZE", "value": str(size)},
            {"name": "LWS_WORKER_INDEX", "value": str(worker)}]


def _with_env(container: dict, extra: list[dict]) -> dict:
    c = copy.deepcopy(container)
    names = {e["name"] for e in extra}
    c["env"] = [e for e in c.get("env") or [] if e["name"] not in names] + extra
    return c


def group_pod(lws: dict, group: int, worker: int) -> dict:
    """Pod ``worker`` (0: the leader) of group ``group``, ready to create."""
    lwt = lws["spec"]["leaderWorkerTemplate"]
    template = lwt.get("leaderTemplate") if worker == 0 and lwt.get("leaderTemplate") else lwt["workerTemplate"]
    meta, name = lws["metadata"], lws["metadata"]["name"]
    tmeta = template.get("metadata") or {}
    env = lws_env(lws, group, worker)
    spec = copy.deepcopy(template["spec"])
    for key in ("containers", "initContainers"):
        if spec.get(key):
            spec[key] = [_with_env(c, env) for c in spec[key]]
    labels = {**(tmeta.get("labels") or {}), NAME_LABEL: name, GROUP_INDEX_LABEL: str(group),
              WORKER_INDEX_LABEL: str(worker)}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"{name}-{group}" if worker == 0 else f"{name}-{group}-{worker}",
            "namespace": meta["namespace"], "labels": labels,
            "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [{"apiVersion": lws["apiVersion"], "kind": "LeaderWorkerSet", "name": name,
                                 "uid": meta["uid"], "controller": True}],
        },
        "spec": spec,
    }


def group_pods(lws: dict, group: int = 0) -> list[dict]:
    size = lws["spec"]["leaderWorkerTemplate"].get("size", 1)
    return [group_pod(lws, group, w) for w in range(size)]
