"""Two operator replicas with leader election on the real control plane (issue 18).

The active replica is killed (SIGKILL: no release, the standby must wait the Lease out)
in the middle of a burst of 30 KernelWarmup creations; the standby takes over, and every
workload ends injected exactly once: one template change (generation 2), two ReplicaSets,
each injected entry once. The measured takeover times are printed (docs/OPERATIONS.md).
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from operator_process import OperatorProcess
from operator_support import (
    apply,
    get,
    install_crd,
    kernelwarmup,
    namespace,
    replicasets,
    template_of,
    vllm_deployment,
    wait_for,
)

from warmup_operator.core import names

pytestmark = pytest.mark.cluster
N = 30
LEASE = "kernel-warmup-operator"
# The chart's defaults (values.yaml leaderElection): what the measured failover reflects.
TIMING = ("15", "10", "2")
RESYNC_S = 5.0


def replica(cluster, tmp_path, name: str, ns: str, lease_ns: str, timing=TIMING) -> OperatorProcess:
    lease_s, renew_s, retry_s = timing
    return OperatorProcess(cluster.kubeconfig, tmp_path / f"{name}.log", namespaces=(ns,), resync_seconds=RESYNC_S,
                           bootstrap_image="registry.local/kernel-warmup:test", extra_env={"POD_NAME": name},
                           extra_args=("--leader-elect", "--leader-elect-resource-namespace", lease_ns,
                                       "--leader-elect-lease-duration", lease_s,
                                       "--leader-elect-renew-deadline", renew_s,
                                       "--leader-elect-retry-period", retry_s))


def holder(cluster, lease_ns: str) -> str:
    lease = get(cluster, "lease", LEASE, lease_ns) or {}
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def leader_gauge(op: OperatorProcess) -> float:
    line = next(ln for ln in op.metrics().splitlines() if ln.startswith("kernel_warmup_leader "))
    return float(line.split()[1])


def injected_by(cluster, name: str, ns: str) -> str:
    t = template_of(cluster, name, ns)
    return ((t.get("metadata") or {}).get("annotations") or {}).get(names.ANN_HASH, "")


def apply_all(cluster, docs: list[dict]) -> None:
    if docs:
        cluster.kubectl_run("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))


def assert_injected_exactly_once(cluster, ns: str, i: int) -> None:
    name = f"d{i}"
    dep = get(cluster, "deployment", name, ns)
    t = dep["spec"]["template"]
    init = [c["name"] for c in t["spec"]["initContainers"]]
    assert init == ["fetch-model", *names.INIT_CONTAINERS], (name, init)
    assert len({v["name"] for v in t["spec"]["volumes"]}) == len(t["spec"]["volumes"]), name
    assert t["metadata"]["annotations"][names.ANN_INJECTED_BY] == f"kw{i}"
    # One template change by the operator: generation 2 and one new ReplicaSet, not two.
    assert dep["metadata"]["generation"] == 2, (name, dep["metadata"]["generation"])
    assert len(replicasets(cluster, ns, name)) == 2, name


def test_failover_during_a_burst_of_30_changes(cluster, tmp_path):
    install_crd(cluster)
    ns, lease_ns = namespace(cluster, "ha-burst"), namespace(cluster, "ha-burst-system")
    apply_all(cluster, [vllm_deployment(f"d{i}", ns, labels={"app": f"d{i}"}, opt_in=f"kw{i}") for i in range(N)])
    wait_for("30 first ReplicaSets", lambda: all(len(replicasets(cluster, ns, f"d{i}")) == 1 for i in range(N)),
             timeout_s=120, poll_s=1)
    a = replica(cluster, tmp_path, "replica-a", ns, lease_ns).start()
    b = None
    try:
        wait_for("replica-a to lead", lambda: holder(cluster, lease_ns).startswith("replica-a_"), timeout_s=60)
        b = replica(cluster, tmp_path, "replica-b", ns, lease_ns).start()
        assert leader_gauge(a) == 1 and leader_gauge(b) == 0
        kws = [kernelwarmup(f"kw{i}", ns, targets={"selector": {"matchLabels": {"app": f"d{i}"}}}) for i in range(N)]
        for doc in kws[:10]:  # the burst: ten one by one, then the active replica dies
            apply(cluster, doc)
        wait_for("a first injection by replica-a", lambda: any(injected_by(cluster, f"d{i}", ns) for i in range(10)),
                 timeout_s=60, poll_s=0.2)
        standby_log = b.log_path.read_text()
        a.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        a.proc.wait(10)
        apply_all(cluster, kws[10:])
        wait_for("replica-b to take the Lease", lambda: holder(cluster, lease_ns).startswith("replica-b_"),
                 timeout_s=90, poll_s=0.2)
        took_lease = time.monotonic() - killed
        wait_for("every workload injected", lambda: all(injected_by(cluster, f"d{i}", ns) for i in range(N)),
                 timeout_s=180, poll_s=0.5)
        all_done = time.monotonic() - killed
        time.sleep(3 * RESYNC_S)  # resyncs by the new leader change nothing
        for i in range(N):
            assert_injected_exactly_once(cluster, ns, i)
        assert leader_gauge(b) == 1
        assert "Injected" not in standby_log  # the standby wrote nothing while replica-a led
        assert "Injected" in b.log_path.read_text()  # the new leader did the rest of the burst
        print(f"\nfailover (SIGKILL, lease {TIMING[0]}s / renew {TIMING[1]}s / retry {TIMING[2]}s): "
              f"Lease taken {took_lease:.1f}s after the kill; all {N} workloads injected {all_done:.1f}s after it")
    finally:
        for op in (a, b):
            if op is not None:
                op.stop()
                print(f"---- {op.log_path.name} (tail) ----\n{op.log_tail(15)}")


def test_standby_writes_nothing_and_a_clean_stop_hands_over_fast(cluster, tmp_path):
    install_crd(cluster)
    ns, lease_ns = namespace(cluster, "ha-handover"), namespace(cluster, "ha-handover-system")
    apply(cluster, vllm_deployment("llm", ns, labels={"app": "llm"}))
    a = replica(cluster, tmp_path, "replica-a", ns, lease_ns).start()
    b = None
    try:
        wait_for("replica-a to lead", lambda: holder(cluster, lease_ns).startswith("replica-a_"), timeout_s=60)
        b = replica(cluster, tmp_path, "replica-b", ns, lease_ns).start()
        apply(cluster, kernelwarmup("kw", ns, targets={"selector": {"matchLabels": {"app": "llm"}}}))
        wait_for("injection", lambda: injected_by(cluster, "llm", ns), timeout_s=60)
        time.sleep(2 * RESYNC_S)
        assert "Injected" not in b.log_path.read_text() and leader_gauge(b) == 0
        stopped = time.monotonic()
        a.stop()  # SIGTERM: the controller stops, then the Lease is released
        assert a.proc.returncode == 0, a.log_tail()
        wait_for("replica-b to take the released Lease", lambda: holder(cluster, lease_ns).startswith("replica-b_"),
                 timeout_s=60, poll_s=0.1)
        handover = time.monotonic() - stopped
        assert "released Lease" in a.log_path.read_text()
        # The new leader resumes the KernelWarmup and changes nothing: still one rollout.
        time.sleep(2 * RESYNC_S)
        dep = get(cluster, "deployment", "llm", ns)
        assert dep["metadata"]["generation"] == 2 and len(replicasets(cluster, ns, "llm")) == 2
        print(f"\nclean handover (SIGTERM, retry {TIMING[2]}s): Lease taken {handover:.1f}s after the stop began")
    finally:
        for op in (a, b):
            if op is not None:
                op.stop()


def test_a_leader_that_cannot_renew_stops(cluster, tmp_path):
    """Someone else's record in the Lease (as after a partition): the holder cannot renew,
    and exits within its renew deadline instead of acting on."""
    install_crd(cluster)
    ns, lease_ns = namespace(cluster, "ha-fenced"), namespace(cluster, "ha-fenced-system")
    a = replica(cluster, tmp_path, "replica-a", ns, lease_ns, timing=("6", "4", "1")).start()
    try:
        wait_for("replica-a to lead", lambda: holder(cluster, lease_ns).startswith("replica-a_"), timeout_s=60)
        patch = {"spec": {"holderIdentity": "intruder", "renewTime": "2026-11-27T00:00:00.000000Z"}}
        cluster.kubectl_run("patch", "lease", LEASE, "-n", lease_ns, "--type=merge", "-p", json.dumps(patch))
        wait_for("replica-a to exit", lambda: a.proc.poll() is not None, timeout_s=30, poll_s=0.2)
        assert a.proc.returncode == 3, a.log_tail()
        assert "could not renew" in a.log_path.read_text()
        assert holder(cluster, lease_ns) == "intruder"
    finally:
        a.stop()
