"""Which KernelWarmup owns a workload, and whether anything must be applied (pure)."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
from support.ssa import apply_fragment

from warmup_operator.core import names, uninject
from warmup_operator.core.decide import CRRecord, decide
from warmup_operator.core.kernelwarmup import parse_spec
from warmup_operator.core.kinds import DEPLOYMENT, LEADERWORKERSET
from warmup_operator.core.targets import lists_are_keyed, selects
from warmup_operator.core.trust import OPT_IN


def deployment(name="llm", labels=None, template_ann=None, env=None, opt_in="kw"):
    c = {"name": "vllm", "image": "vllm/vllm-openai:v0.11.0", "resources": {"limits": {"nvidia.com/gpu": 1}}}
    if env:
        c["env"] = env
    t = {"metadata": {"labels": {"app": name}}, "spec": {"containers": [c]}}
    if template_ann:
        t["metadata"]["annotations"] = template_ann
    meta = {"name": name, "namespace": "ns", "labels": labels if labels is not None else {"app": "vllm"}}
    if opt_in:
        meta["annotations"] = {OPT_IN: opt_in}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": t}}


def cr(name="kw", created="2026-01-01T00:00:00Z", deleting=False, **spec):
    s = {"targets": {"selector": {"matchLabels": {"app": "vllm"}}}, "model": {"configPath": "/m/config.json"}}
    s.update(spec)
    # the API server moves metadata.generation with every change of the spec
    generation = int(hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:8], 16)
    return CRRecord(name=name, namespace="ns", uid=name, created=created, generation=generation, spec=s,
                    deleting=deleting)


def applied(obj, d):
    """The workload after the API server applied the decision's body (SSA model)."""
    out = copy.deepcopy(obj)
    if "spec" in d.body:
        out["spec"]["template"] = apply_fragment(obj["spec"]["template"], d.body["spec"]["template"])
    labels = (d.body["metadata"].get("labels") or {})
    out["metadata"]["labels"] = {**(out["metadata"].get("labels") or {}), **labels}
    return out


def test_inject_then_nothing_to_do():
    d = decide(DEPLOYMENT, deployment(), [cr()])
    assert d.action == "inject" and d.owner == "kw"
    assert d.body["apiVersion"] == "apps/v1" and d.body["metadata"]["name"] == "llm"
    assert set(d.body["metadata"]["labels"]) == {names.LABEL_INPUTS}  # the workload's, not the template's
    assert "annotations" not in d.body["metadata"]  # a Deployment's generation moves with its annotations
    again = decide(DEPLOYMENT, applied(deployment(), d), [cr()])
    assert again.action == "none" and again.hash == d.hash


def test_changed_cr_gives_a_new_hash_once():
    first = decide(DEPLOYMENT, deployment(), [cr()])
    obj = applied(deployment(), first)
    second = decide(DEPLOYMENT, obj, [cr(tensorParallelSize=2)])
    assert second.action == "inject" and second.hash != first.hash
    assert decide(DEPLOYMENT, applied(obj, second), [cr(tensorParallelSize=2)]).action == "none"


def test_removed_when_cr_gone_or_workload_deselected():
    obj = applied(deployment(), decide(DEPLOYMENT, deployment(), [cr()]))
    assert decide(DEPLOYMENT, obj, []).action == "remove"
    assert decide(DEPLOYMENT, obj, [cr(deleting=True)]).action == "remove"
    obj["metadata"]["labels"] = {"app": "other"}
    d = decide(DEPLOYMENT, obj, [cr()])
    assert d.action == "remove" and d.body["metadata"]["name"] == "llm"
    assert "spec" not in d.body  # an empty apply: every operator-owned field goes


def test_untouched_workloads_stay_untouched():
    assert decide(DEPLOYMENT, deployment(labels={"app": "web"}), [cr()]).action == "none"
    assert decide(DEPLOYMENT, deployment(), []).action == "none"


def test_the_opted_in_cr_wins_and_others_are_told():
    crs = [cr("newer", created="2026-02-01T00:00:00Z"), cr("older", created="2026-01-01T00:00:00Z")]
    d = decide(DEPLOYMENT, deployment(opt_in="newer"), crs)
    assert d.owner == "newer" and d.action == "inject"
    d = decide(DEPLOYMENT, deployment(opt_in=None), crs)  # selected twice, opted into neither
    assert d.action == "none" and d.owner == "older" and d.error.reason == "NotOptedIn"


def test_invalid_spec_keeps_an_existing_injection():
    obj = applied(deployment(), decide(DEPLOYMENT, deployment(), [cr()]))
    broken = cr(cache={"mountPath": "relative"})
    assert decide(DEPLOYMENT, obj, [broken]).action == "none"


def test_injection_error_is_reported_not_applied():
    d = decide(DEPLOYMENT, deployment(), [cr(servingContainer="missing")])
    assert d.action == "none" and d.error is not None and d.error.field == "spec.servingContainer"


def test_lws_injects_into_both_templates():
    tmpl = deployment()["spec"]["template"]
    lws = {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
           "metadata": {"name": "big", "namespace": "ns", "labels": {"app": "vllm"}, "annotations": {OPT_IN: "kw"}},
           "spec": {"leaderWorkerTemplate": {"size": 2, "leaderTemplate": tmpl, "workerTemplate": tmpl}}}
    d = decide(LEADERWORKERSET, lws, [cr()])
    lwt = d.body["spec"]["leaderWorkerTemplate"]
    assert set(lwt) == {"leaderTemplate", "workerTemplate"}
    assert lwt["workerTemplate"]["metadata"]["annotations"][names.ANN_INJECTED_BY] == "kw"


SELECTOR_CASES = [
    ({"selector": {"matchLabels": {"app": "vllm"}}}, "x", {"app": "vllm"}, True),
    ({"selector": {"matchLabels": {"app": "vllm"}}}, "x", {"app": "web"}, False),
    ({"names": ["x"]}, "x", {}, True),
    ({"names": ["y"]}, "x", {"app": "vllm"}, False),
    ({"selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gpu"]}]}}, "x", {"tier": "gpu"}, True),
    ({"selector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gpu"]}]}}, "x", {"tier": "gpu"}, False),
    ({"selector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}, "x", {}, False),
    ({"selector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}}, "x", {}, True),
    ({"names": ["x"], "kinds": ["StatefulSet"]}, "x", {}, False),
]


@pytest.mark.parametrize("targets,name,labels,want", SELECTOR_CASES)
def test_selection(targets, name, labels, want):
    s = parse_spec({"targets": targets, "model": {"configPath": "/m/config.json"}})
    assert selects(s.targets, "Deployment", name, labels) is want


def test_lws_crd_list_markers():
    pod = {"initContainers": {"x-kubernetes-list-type": "map"}, "volumes": {"x-kubernetes-list-type": "map"},
           "containers": {"x-kubernetes-list-type": "map"}}
    def crd(p):
        return {"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"properties": {"spec": {"properties": {
            "leaderWorkerTemplate": {"properties": {"workerTemplate": {"properties": {"spec": {"properties": p}}}}}}}}}}}]}}
    assert lists_are_keyed(crd(pod))
    assert not lists_are_keyed(crd({**pod, "volumes": {}}))


def _as_an_earlier_version_injected(obj):
    """``obj`` as an earlier operator version left it: another injection (a retired env name
    on the serving container, another hash) and no record of its inputs on the workload."""
    old = copy.deepcopy(obj)
    t = old["spec"]["template"]
    t["metadata"]["annotations"][names.ANN_HASH] = "0ld0ld0ld0ld0ld0"
    t["spec"]["containers"][0]["env"].append({"name": names.RETIRED_SERVING_ENV[0], "value": "/c"})
    del old["metadata"]["labels"][names.LABEL_INPUTS]
    return old


def test_an_earlier_versions_injection_is_kept_and_recorded_once():
    old = _as_an_earlier_version_injected(applied(deployment(), decide(DEPLOYMENT, deployment(), [cr()])))
    d = decide(DEPLOYMENT, old, [cr()])
    assert d.action == "none" and d.record and d.hash == "0ld0ld0ld0ld0ld0"
    # the record's body owns the live injection as it is: applying it changes no template value
    assert apply_fragment(old["spec"]["template"], d.body["spec"]["template"]) == old["spec"]["template"]
    recorded = applied(old, d)
    assert recorded["spec"]["template"] == old["spec"]["template"]
    again = decide(DEPLOYMENT, recorded, [cr()])
    assert again.action == "none" and not again.record and again.hash == d.hash


@pytest.mark.parametrize("change", ["workload", "cr"])
def test_an_earlier_versions_injection_gives_way_once_its_inputs_change(change):
    old = _as_an_earlier_version_injected(applied(deployment(), decide(DEPLOYMENT, deployment(), [cr()])))
    recorded = applied(old, decide(DEPLOYMENT, old, [cr()]))
    crs = [cr()]
    if change == "workload":
        recorded["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm/vllm-openai:v0.33.0"
    else:
        crs = [cr(tensorParallelSize=2)]
    d = decide(DEPLOYMENT, recorded, crs)
    assert d.action == "inject" and d.hash != "0ld0ld0ld0ld0ld0"
    assert names.RETIRED_SERVING_ENV[0] not in str(d.body)  # the API server drops what the apply no longer holds


def test_a_retired_env_name_is_the_operators():
    old = _as_an_earlier_version_injected(applied(deployment(), decide(DEPLOYMENT, deployment(), [cr()])))
    assert "env" not in uninject.user_view(old["spec"]["template"])["spec"]["containers"][0]


def test_an_earlier_versions_injection_on_a_shared_folder_is_not_kept():
    """The review of issue 25: an injection an earlier version made on the hostPath folder
    every namespace shares must not be kept past the upgrade (its Pods would go on writing
    into every tenant's folder): it is re-injected onto the namespace's own folder."""
    hp = {"hostPath": {"path": "/var/cache/kernel-warmup"}}
    kw = cr(cache=hp)
    old = _as_an_earlier_version_injected(applied(deployment(), decide(DEPLOYMENT, deployment(), [kw])))
    vols = old["spec"]["template"]["spec"]["volumes"]
    cache_vol = next(v for v in vols if v["name"] == names.CACHE_VOLUME)
    cache_vol["hostPath"] = {"path": "/var/cache/kernel-warmup"}  # as the earlier version mounted it
    d = decide(DEPLOYMENT, old, [kw])
    assert d.action == "inject"
    new = next(v for v in d.body["spec"]["template"]["spec"]["volumes"] if v["name"] == names.CACHE_VOLUME)
    assert new["hostPath"]["path"] == "/var/cache/kernel-warmup/namespaces/ns"
    # the same injection on the namespace's own folder is kept, as before
    kept = _as_an_earlier_version_injected(applied(deployment(), decide(DEPLOYMENT, deployment(), [kw])))
    assert decide(DEPLOYMENT, kept, [kw]).action == "none"
