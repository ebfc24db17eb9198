"""The operator reads the serving container's `vllm serve` command (real control plane):
what the KernelWarmup leaves unset comes from the command, what it sets wins with a Warning
Event naming both, the status says which value came from where, and a flag vLLM would refuse
is reported naming it, with nothing injected."""

from __future__ import annotations

import json

import pytest
from operator_support import running_operator, apply, get, get_list, kernelwarmup, namespace, vllm_deployment, wait_for

from warmup_operator.core import names

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory):
    yield from running_operator(cluster, tmp_path_factory, resync_seconds=1.0)


def serving_deployment(name: str, ns: str, args: list[str]) -> dict:
    dep = vllm_deployment(name, ns, labels={"warm": name})
    dep["spec"]["template"]["spec"]["containers"][0]["args"] = args
    return dep


def warmer_spec(cluster, name: str, ns: str) -> dict:
    t = get(cluster, "deployment", name, ns)["spec"]["template"]
    warmer = next((c for c in t["spec"].get("initContainers") or [] if c["name"] == names.WARMER_CONTAINER), None)
    if warmer is None:
        return {}
    return json.loads(next(e["value"] for e in warmer["env"] if e["name"] == "KERNEL_WARMER_SPEC"))


def target_status(cluster, kw: str, ns: str) -> dict:
    st = (get(cluster, "kernelwarmup", kw, ns) or {}).get("status") or {}
    return (st.get("targets") or [{}])[0]


def test_unset_fields_come_from_the_command_and_the_status_says_so(cluster, operator):
    ns = namespace(cluster, "engine-derive")
    args = ["/models/llama", "--tensor-parallel-size=2", "--attention-backend", "TRITON_ATTN",
            "--kv-cache-dtype", "nvfp4", "--max-num-batched-tokens", "4096"]
    apply(cluster, serving_deployment("llm", ns, args))
    apply(cluster, kernelwarmup("kw", ns, targets={"names": ["llm"]}))
    spec = wait_for("injection", lambda: warmer_spec(cluster, "llm", ns))
    assert spec["tensorParallelSize"] == 2 and spec["flashinfer"]["maxNumBatchedTokens"] == 4096
    assert spec["engine"]["attentionBackend"] == "TRITON_ATTN" and spec["engine"]["kvCacheDtype"] == "nvfp4"
    engine = wait_for("derived settings in status", lambda: target_status(cluster, "kw", ns).get("engine"))
    rows = {r["field"]: (r["value"], r["from"]) for r in engine}
    assert rows["tensorParallelSize"] == ("2", "args --tensor-parallel-size")
    assert rows["engine.attentionBackend"] == ("TRITON_ATTN", "args --attention-backend")


def test_a_kernelwarmup_value_wins_and_the_conflict_is_a_warning_event(cluster, operator):
    ns = namespace(cluster, "engine-conflict")
    apply(cluster, serving_deployment("llm", ns, ["/models/llama", "-tp", "4"]))
    apply(cluster, kernelwarmup("kw", ns, targets={"names": ["llm"]}, tensorParallelSize=2))
    spec = wait_for("injection", lambda: warmer_spec(cluster, "llm", ns))
    assert spec["tensorParallelSize"] == 2

    def conflict_event():
        return [e for e in get_list(cluster, "events", ns)
                if e.get("type") == "Warning" and "tensorParallelSize is 2" in e.get("message", "")
                and "args --tensor-parallel-size" in e.get("message", "")]
    assert wait_for("a Warning Event naming both values", conflict_event)
    rows = {r["field"]: r["from"] for r in target_status(cluster, "kw", ns).get("engine") or []}
    assert rows.get("tensorParallelSize") == "KernelWarmup"


def test_a_flag_vllm_would_refuse_is_named_and_nothing_is_injected(cluster, operator):
    ns = namespace(cluster, "engine-bad")
    apply(cluster, serving_deployment("llm", ns, ["/models/llama", "--attention-backend", "FLASH_ATTENTION_3"]))
    apply(cluster, kernelwarmup("kw", ns, targets={"names": ["llm"]}))
    msg = wait_for("status message", lambda: target_status(cluster, "kw", ns).get("message"))
    assert "--attention-backend" in msg and "FLASH_ATTN" in msg, msg
    assert warmer_spec(cluster, "llm", ns) == {}
    assert target_status(cluster, "kw", ns)["injected"] is False
