"""Issue 25 item 3 on the real control plane: one tenant's prewarm storm does not stall the
operator for the others.

The review's case (tests/support/storm.py): one KernelWarmup with a hostPath cache prewarmed
on 150 GPU nodes, edited 5 times 3 s apart, while another namespace's workloads are created
one after another through the whole storm and the time to each one's injection is measured.
Before the fix every handler thread waited on the storm workload's lock (on this machine
3 of 20 workloads were never injected within 60 s); the bound asserted here is generous for
a 2-core CI machine. `bench/bench_operator_storm.py` runs the same storm against the code
before the fix and now, side by side (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import pytest
import storm
from operator_support import namespace, running_operator, vllm_deployment, wait_for

pytestmark = pytest.mark.cluster
NODES = 150
BOUND_S = 5.0  # the assertion; the aim (issue 25) is < 3 s at p99


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory):
    yield from running_operator(cluster, tmp_path_factory, resync_seconds=10.0,
                                extra_args=(f"--prewarm-max-jobs={NODES}", f"--prewarm-max-jobs-per-namespace={NODES}"))


@pytest.fixture(scope="module")
def api(cluster):
    client = storm.client(str(cluster.kubeconfig))
    storm.make_nodes(client, NODES)
    yield client
    cluster.kubectl_run("delete", "nodes", "-l", "pool=storm", "--wait=false", check=False)


@pytest.fixture
def namespaces(cluster):
    """The storm's two namespaces, deleted after the test, and waited for: 150 Jobs and
    their Pods must not be left for the Job controller and the API server to chew on while
    the next modules' tests run."""
    made = [namespace(cluster, "load-storm"), namespace(cluster, "load-other")]
    yield made
    for ns in made:
        cluster.kubectl_run("delete", "namespace", ns, "--wait=false", check=False)
    wait_for("the storm's namespaces gone", lambda: not any(
        cluster.kubectl_run("get", "namespace", ns, check=False).returncode == 0 for ns in made),
        timeout_s=300, poll_s=2)


def test_a_prewarm_storm_does_not_stall_another_namespaces_injection(cluster, operator, api, namespaces):
    storm_ns, other_ns = namespaces
    result = storm.run(api, lambda name, ns: vllm_deployment(name, ns, labels={"warm": "yes"}), operator.healthy,
                       storm_ns=storm_ns, other_ns=other_ns, nodes=NODES)
    last = wait_for(f"{NODES} Jobs of the last edit", lambda: (n := storm.jobs_of_last_edit(api, storm_ns)) == NODES and n,
                    timeout_s=240, poll_s=2)
    print(f"\nload: {NODES} nodes x 5 edits 3s apart; another namespace's time to injection over {result.line()}; "
          f"the last edit's Jobs: {last}")
    assert all(result.healthy), "/healthz failed during the storm"
    assert result.percentile(0.99) < BOUND_S, f"p99 over the {BOUND_S}s bound: {sorted(result.samples)}"
