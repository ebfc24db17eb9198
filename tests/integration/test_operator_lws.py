"""LeaderWorkerSet against the real API server: the control plane serves the LWS CRD of
devcluster/crds/ (no LWS controller; devcluster/fake_lws.py creates a group's Pods as the
controller and its webhook would). Injection into the leader and worker templates, one
generation per change, status from the leader's and workers' Pods, removal, and the
warmer's world from the LWS variables, run over gloo in two processes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import fake_lws
import pytest
from operator_process import OperatorProcess, free_port
from operator_support import (
    LWS_TEMPLATES,
    apply,
    get,
    install_crd,
    install_lws_crd,
    kernelwarmup,
    namespace,
    simulate_init_termination,
    vllm_deployment,
    wait_for,
)

from warmup_operator.core import names
from warmup_operator.core.trust import OPT_IN

pytestmark = pytest.mark.cluster
RESYNC_S = 1.0


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory):
    install_crd(cluster)
    install_lws_crd(cluster)
    proc = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator-lws") / "operator.log",
                           resync_seconds=RESYNC_S, bootstrap_image="registry.local/kernel-warmup:test")
    proc.start()
    yield proc
    proc.stop()
    print("---- operator log (tail) ----\n" + proc.log_tail(80))


def leaderworkerset(name: str, ns: str, size: int = 2) -> dict:
    """Leader and workers serve one model with TP 2 across the group; the leader template
    differs (its own label and env) so a mix-up of the two would show."""
    base = vllm_deployment(name, ns)["spec"]["template"]
    leader, worker = json.loads(json.dumps(base)), json.loads(json.dumps(base))
    leader["metadata"]["labels"] = {"pod": name, "role": "leader"}
    leader["spec"]["containers"][0]["env"].append({"name": "ROLE", "value": "leader"})
    worker["metadata"]["labels"] = {"pod": name, "role": "worker"}
    return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": {"name": name, "namespace": ns, "labels": {"warm": "yes"},
                         "annotations": {OPT_IN: "kw"}},  # the owner opts into KernelWarmup kw
            "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": size, "leaderTemplate": leader,
                                                             "workerTemplate": worker}}}


def lws_of(cluster, name: str, ns: str) -> dict:
    return get(cluster, "leaderworkerset", name, ns)


def hashes(lws: dict) -> tuple:
    """The injection hash of the leader and the worker template (each hashes its own injection)."""
    lwt = lws["spec"]["leaderWorkerTemplate"]
    return tuple(((lwt[t].get("metadata") or {}).get("annotations") or {}).get(names.ANN_HASH) for t in LWS_TEMPLATES)


def injected(cluster, name: str, ns: str, not_hashes: tuple = ()):
    """The LWS once both templates carry a hash, each other than in ``not_hashes``."""
    lws = lws_of(cluster, name, ns)
    hs = hashes(lws)
    return lws if all(hs) and not set(hs) & set(not_hashes) else None


def by_name(items, name):
    return next((i for i in items or [] if i["name"] == name), None)


def steady_generation(cluster, name: str, ns: str) -> int:
    """The generation after a few resyncs; fails if it still moves."""
    gen = lws_of(cluster, name, ns)["metadata"]["generation"]
    time.sleep(5 * RESYNC_S)
    assert lws_of(cluster, name, ns)["metadata"]["generation"] == gen, "the operator patched again without a change"
    return gen


def test_lws_injection_one_generation_per_change_and_removal(cluster, operator):
    ns = namespace(cluster, "lws-lifecycle")
    apply(cluster, leaderworkerset("llm", ns))
    original = lws_of(cluster, "llm", ns)
    apply(cluster, kernelwarmup("kw", ns, failurePolicy="Ignore"))
    lws = wait_for("injection into both templates", lambda: injected(cluster, "llm", ns))
    assert lws["metadata"]["generation"] == original["metadata"]["generation"] + 1  # one patch, both templates
    lwt, before = lws["spec"]["leaderWorkerTemplate"], original["spec"]["leaderWorkerTemplate"]
    for t in LWS_TEMPLATES:
        spec = lwt[t]["spec"]
        assert [c["name"] for c in spec["initContainers"]] == ["fetch-model", *names.INIT_CONTAINERS], t
        assert spec["initContainers"][0] == before[t]["spec"]["initContainers"][0], t  # merged, not replaced
        assert {v["name"] for v in spec["volumes"]} == {"models", "shm", *names.VOLUMES}, t
        serving = by_name(spec["containers"], "vllm")
        assert serving["args"] == before[t]["spec"]["containers"][0]["args"], t
        assert ("ROLE" in {e["name"] for e in serving["env"]}) == (t == "leaderTemplate"), t
        env = {e["name"]: e.get("value") for e in serving["env"]}
        assert env["TRITON_CACHE_DIR"] == "/kernel-warmup-cache/triton", t
        assert env["PYTHONPATH"] == f"{names.PKG_SITE_DIR}:/opt/plugins", t
        assert lwt[t]["metadata"]["labels"] == before[t]["metadata"]["labels"], t
    gen = steady_generation(cluster, "llm", ns)

    apply(cluster, kernelwarmup("kw", ns, failurePolicy="Ignore", tensorParallelSize=2))
    wait_for("new hashes in both templates", lambda: injected(cluster, "llm", ns, not_hashes=hashes(lws)))
    assert steady_generation(cluster, "llm", ns) == gen + 1

    cluster.kubectl_run("delete", "kernelwarmup", "kw", "-n", ns, "--wait=true", "--timeout=60s")
    restored = wait_for("removal", lambda: not any(hashes(x := lws_of(cluster, "llm", ns))) and x)
    assert restored["spec"] == original["spec"]
    managers = {m["manager"]: json.dumps(m.get("fieldsV1"))
                for m in get(cluster, "leaderworkerset", "llm", ns, managed=True)["metadata"]["managedFields"]}
    ours = managers.get(names.FIELD_MANAGER, "")
    assert "initContainers" not in ours and "volumes" not in ours and "annotations" not in ours


def create_group(cluster, lws: dict) -> list[dict]:
    pods = fake_lws.group_pods(lws)
    for pod in pods:
        cluster.kubectl_run("create", "-f", "-", input=json.dumps(pod))
    return [get(cluster, "pod", p["metadata"]["name"], lws["metadata"]["namespace"]) for p in pods]


def test_lws_status_from_the_leader_and_worker_pods(cluster, operator):
    ns = namespace(cluster, "lws-status")
    apply(cluster, leaderworkerset("grp", ns))
    apply(cluster, kernelwarmup("kw", ns))
    leader, worker = create_group(cluster, wait_for("injection", lambda: injected(cluster, "grp", ns)))
    assert leader["metadata"]["labels"]["role"] == "leader" and worker["metadata"]["labels"]["role"] == "worker"
    from kernel_warmer.report import TritonCounts, WarmupSummary

    ok = WarmupSummary(status="ok", seconds=7.5, cache_key="k", triton=TritonCounts(compiled=2)).compact_json()
    simulate_init_termination(cluster, leader, ok)

    def last_warmup():
        return ((get(cluster, "kernelwarmup", "kw", ns) or {}).get("status") or {}).get("lastWarmup") or {}

    lw = wait_for("the leader's warmup in status", lambda: last_warmup().get("pod") == "grp-0" and last_warmup())
    assert lw["workload"] == "grp" and lw["succeeded"] is True and lw["seconds"] == 7.5
    status = get(cluster, "kernelwarmup", "kw", ns)["status"]
    assert status["targetsInjected"] == "1/1" and status["targets"][0]["kind"] == "LeaderWorkerSet"

    time.sleep(1.1)  # finishedAt has 1 s resolution: the worker's run is the later one
    simulate_init_termination(cluster, worker, "Traceback...\nRuntimeError: rendezvous with grp-0 timed out", 1)
    lw = wait_for("the worker's failure in status", lambda: last_warmup().get("pod") == "grp-0-1" and last_warmup())
    assert lw["workload"] == "grp" and lw["succeeded"] is False and lw["exitCode"] == 1
    cond = wait_for("Degraded", lambda: next((c for c in get(cluster, "kernelwarmup", "kw", ns)["status"]["conditions"]
                                              if c["type"] == "Degraded" and c["status"] == "True"), None))
    # The worker's log words stay in its log (no Pod text reaches the CR); the condition names the Pod.
    assert f"kubectl logs grp-0-1 -c {names.WARMER_CONTAINER}" in cond["message"]
    assert "rendezvous" not in cond["message"]


def warmer_env(pod: dict) -> dict[str, str]:
    warmer = by_name(pod["spec"]["initContainers"], names.WARMER_CONTAINER)
    return {e["name"]: e["value"] for e in warmer["env"] if "value" in e}


def run_group_over_gloo(envs: list[dict[str, str]], spec, root: Path) -> dict:
    """Each Pod's warmer world (one worker per Pod: a CPU stands in for its GPU), in its own process."""
    from dist_jobs import ShareJob  # tests/support (conftest puts it on sys.path; spawned workers inherit it)

    from kernel_warmer.dist.workers import run_local_workers

    outcomes = {}

    def pod(i: int) -> None:
        outcomes[i] = run_local_workers(ShareJob(str(root)), 1, env=envs[i], spec=spec, timeout_s=30,
                                        total_timeout_s=120)

    threads = [threading.Thread(target=pod, args=(i,)) for i in range(len(envs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_lws_world_from_the_injected_pods_over_gloo(cluster, operator, tmp_path):
    pytest.importorskip("torch.distributed")
    from kernel_warmer.dist.world import derive_world
    from kernel_warmer.spec import WarmerSpec

    ns = namespace(cluster, "lws-world")
    apply(cluster, leaderworkerset("tp", ns))
    apply(cluster, kernelwarmup("kw", ns))
    pods = create_group(cluster, wait_for("injection", lambda: injected(cluster, "tp", ns)))
    envs = [warmer_env(p) for p in pods]
    spec = WarmerSpec.from_json(envs[0]["KERNEL_WARMER_SPEC"]).distributed
    assert WarmerSpec.from_json(envs[1]["KERNEL_WARMER_SPEC"]).distributed == spec
    for i, env in enumerate(envs):
        assert (env["LWS_LEADER_ADDRESS"], env["LWS_GROUP_SIZE"], env["LWS_WORKER_INDEX"]) == ("tp-0.tp.lws-world", "2", str(i))
        w = derive_world(env, spec, local_world_size=1)
        assert (w.source, w.rank, w.world_size, w.master_addr) == ("lws", i, 2, "tp-0.tp.lws-world")

    # Here no headless Service resolves the leader's name: point it at loopback, and use a
    # free port instead of the spec's fixed one (other test runs share this machine).
    port = str(free_port())
    local = [{**env, "LWS_LEADER_ADDRESS": "127.0.0.1", "MASTER_PORT": port} for env in envs]
    outcomes = run_group_over_gloo(local, spec, tmp_path)
    flat = [outcomes[i][0] for i in (0, 1)]
    assert all(o.ok for o in flat), [o.error for o in flat]
    assert [o.result["rank"] for o in flat] == [0, 1]
    assert flat[0].result["sha256"] == flat[1].result["sha256"]
    assert [g["rank"] for g in flat[1].result["per_rank"]] == [0, 1]
    for node in (0, 1):  # each Pod's local rank 0 wrote the tactics to its own volume
        assert (tmp_path / f"node{node}" / "env-test" / "autotune.json").is_file()
