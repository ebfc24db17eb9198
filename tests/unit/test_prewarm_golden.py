"""Complete prewarm Jobs: a user's pod template, a KernelWarmup spec and the target in, the
Job out (``tests/golden/prewarm/<case>/job.json``), plus what every case keeps: the Job runs
exactly the warmer the injection puts into the template (same command, env and spec, so
the rollout's Pods find the cache warm), on the serving container's GPUs, where the
workload's Pods may run, owned by the KernelWarmup. ``KW_REGENERATE_GOLDEN=1`` rewrites the
expected files after a deliberate change; review their diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.golden import assert_golden

from warmup_operator.core import names
from warmup_operator.core import prewarm
from warmup_operator.core.inject import build_injection
from warmup_operator.core.kernelwarmup import parse_spec

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "prewarm"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


def load(case: str, name: str) -> dict:
    return json.loads((GOLDEN / case / name).read_text())


def job_and_injection(case: str) -> tuple[dict, dict, dict]:
    template, r = load(case, "template.json"), load(case, "request.json")
    spec = parse_spec(load(case, "kernelwarmup-spec.json"), r["namespace"])
    inj = build_injection(spec, template, cr_name=r["cr"], default_bootstrap_image="registry.local/kernel-warmup:1")
    req = prewarm.JobRequest(r["cr"], r["uid"], r["kind"], r["workload"], r["namespace"], inj.hash, template,
                             inj.fragment, prewarm.timeout_of(spec), r["node"])
    return prewarm.build_job(req), inj.fragment, template


@pytest.mark.parametrize("case", CASES)
def test_job_is_the_golden_one(case: str):
    job, _, _ = job_and_injection(case)
    assert_golden(GOLDEN / case / "job.json", job)


@pytest.mark.parametrize("case", CASES)
def test_job_runs_the_injected_warmer_where_the_workload_runs(case: str):
    job, fragment, template = job_and_injection(case)
    pod, tspec = job["spec"]["template"]["spec"], template["spec"]
    injected = {c["name"]: c for c in fragment["spec"]["initContainers"]}
    assert pod["containers"] == [injected[names.WARMER_CONTAINER]]  # same command, env, spec, GPUs, mounts
    assert pod["initContainers"] == [injected[names.BOOTSTRAP_CONTAINER]]
    for key in ("nodeSelector", "tolerations", "runtimeClassName", "imagePullSecrets", "priorityClassName"):
        assert pod.get(key) == tspec.get(key)
    node = load(case, "request.json")["node"]
    node_affinity = (tspec.get("affinity") or {}).get("nodeAffinity")
    if node is None:
        assert pod.get("affinity") == ({"nodeAffinity": node_affinity} if node_affinity else None)
    else:  # every required term (they are ORed) names the node
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms and all({"key": "metadata.name", "operator": "In", "values": [node]} in t["matchFields"] for t in terms)
    assert "podAntiAffinity" not in (pod.get("affinity") or {})
    mounted = {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounted == {v["name"] for v in pod["volumes"]}  # every mount has its volume, nothing else
    assert job["metadata"]["ownerReferences"][0]["kind"] == names.KIND and job["metadata"]["ownerReferences"][0]["controller"]
    assert job["spec"]["ttlSecondsAfterFinished"] == prewarm.JOB_TTL_SECONDS and job["spec"]["backoffLimit"] == 0
    assert len(job["metadata"]["name"]) <= 63 and pod["restartPolicy"] == "Never"
    assert names.ANN_INJECTED_BY not in (job["spec"]["template"]["metadata"].get("annotations") or {})


def test_there_are_golden_cases():
    assert len(CASES) >= 3
