"""core/admission.py: what the webhook writes equals what the controller's apply makes,
the API server's keyed-list order, the inverse of user_view, and why a write was missed."""

from __future__ import annotations

import copy

import pytest
from ssa import apply_fragment
from workloads import container, spec_doc, template

from warmup_operator.core import names, uninject
from warmup_operator.core.admission import (
    _merge_list,
    admit,
    injected_template,
    merge_keyed,
    missed_admission,
)
from warmup_operator.core.decide import CRRecord, decide
from warmup_operator.core.kinds import DEPLOYMENT, LEADERWORKERSET
from warmup_operator.core.trust import OPT_IN


def keys(items):
    return [i["name"] for i in items]


@pytest.mark.parametrize("live,applied,expected", [
    (["a", "b"], ["x", "y"], ["a", "b", "x", "y"]),  # new entries at the end
    (["HF", "P"], ["T", "F", "P"], ["HF", "T", "F", "P"]),  # a new entry before the shared one after it
    (["b", "a", "c"], ["a", "n", "b"], ["a", "c", "n", "b"]),  # shared entries in the applied order
    (["a", "b"], ["a", "b"], ["a", "b"]),
    ([], ["x"], ["x"]),
])
def test_list_order_is_the_api_servers(live, applied, expected):
    out = _merge_list([{"name": k, "v": "live"} for k in live], [{"name": k, "w": "applied"} for k in applied], "name")
    assert keys(out) == expected
    for item in out:  # shared entries merged, field by field
        assert ("v" in item) == (item["name"] in live) and ("w" in item) == (item["name"] in applied)


def test_merge_keyed_merges_maps_and_replaces_scalars_and_unkeyed_lists():
    live = {"a": {"b": 1, "c": [1, 2]}, "env": [{"name": "X", "value": "1"}]}
    frag = {"a": {"c": [3]}, "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}]}
    assert merge_keyed(live, frag) == {"a": {"b": 1, "c": [3]}, "env": [{"name": "X", "value": "2"},
                                                                         {"name": "Y", "value": "3"}]}
    assert live["env"][0]["value"] == "1"  # inputs untouched


CR = CRRecord("kw", "ns", uid="u", created="2026-01-01T00:00:00Z", generation=1,
              spec=spec_doc(targets={"names": ["llm"]}), observed_generation=1)


def deployment(tmpl: dict, label_opt_in: bool = True) -> dict:
    meta = {"name": "llm", "namespace": "ns", "labels": {OPT_IN: "kw"} if label_opt_in else {}}
    if not label_opt_in:
        meta["annotations"] = {OPT_IN: "kw"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {"template": tmpl}}


def user_template() -> dict:
    return template(container(env=[{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "PYTHONPATH", "value": "/u"}]),
                    initContainers=[{"name": "fetch", "image": "busybox"}])


def admitted(obj: dict) -> dict:
    adm = admit(DEPLOYMENT, obj, decide(DEPLOYMENT, obj, [CR]))
    out = copy.deepcopy(obj)
    for path, t in adm.templates.items():
        out["spec"]["template"] = t
        assert path == ("spec", "template")
    if adm.inputs:  # as the webhook writes it (webhook._record_inputs)
        out["metadata"].setdefault("labels", {})[names.LABEL_INPUTS] = adm.inputs
    return out


def test_webhook_gives_what_the_controllers_fragment_gives_and_is_a_fixpoint():
    obj = deployment(user_template())
    d = decide(DEPLOYMENT, obj, [CR])
    assert d.action == "inject"
    once = admitted(obj)
    frag = d.body["spec"]["template"]
    assert once["spec"]["template"] == merge_keyed(user_template(), frag)
    # the same entries as the tests' model of server-side apply (which only appends)
    model = apply_fragment(user_template(), frag)
    assert sorted(keys(once["spec"]["template"]["spec"]["containers"][0]["env"])) == sorted(keys(model["spec"]["containers"][0]["env"]))
    assert keys(once["spec"]["template"]["spec"]["initContainers"]) == ["fetch", *names.INIT_CONTAINERS]
    assert admitted(once) == once  # a second write changes nothing
    assert decide(DEPLOYMENT, once, [CR]).action == "none"  # and the controller agrees


def test_a_user_edit_is_injected_from_the_edited_template():
    once = admitted(deployment(user_template()))
    edited = copy.deepcopy(once)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm/vllm-openai:v0.11.9"
    twice = admitted(edited)
    spec = twice["spec"]["template"]["spec"]
    warmer = next(c for c in spec["initContainers"] if c["name"] == names.WARMER_CONTAINER)
    assert warmer["image"] == "vllm/vllm-openai:v0.11.9"
    h = lambda o: o["spec"]["template"]["metadata"]["annotations"][names.ANN_HASH]  # noqa: E731
    assert h(twice) != h(once)


def test_a_reset_pythonpath_is_put_back_in_the_same_write():
    once = admitted(deployment(user_template()))
    reset = copy.deepcopy(once)
    env = reset["spec"]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "PYTHONPATH")["value"] = "/u"  # kubectl apply of the user's manifest
    assert admitted(reset) == once


def test_removal_gives_the_users_view():
    once = admitted(deployment(user_template()))
    gone = copy.deepcopy(once)
    gone["metadata"]["labels"] = {}  # the owner takes the opt-in away
    out = admitted(gone)
    assert out["spec"]["template"] == uninject.user_view(once["spec"]["template"])
    assert out["spec"]["template"]["spec"]["containers"][0]["env"][-1] == {"name": "PYTHONPATH", "value": "/u"}


def test_a_gate_holds_the_injection_back():
    obj = deployment(user_template())
    adm = admit(DEPLOYMENT, obj, decide(DEPLOYMENT, obj, [CR]), gate=lambda d: f"prewarm of {d.hash} pending")
    assert adm.templates == {} and "prewarm" in adm.note


def test_injected_parts_is_the_inverse_of_user_view():
    for tmpl in (user_template(), template(container())):
        t = admitted(deployment(tmpl))["spec"]["template"]
        assert merge_keyed(uninject.user_view(t), uninject.injected_parts(t)) == t
        assert uninject.injected_parts(uninject.user_view(t)) == {}


def test_injected_template_of_both_lws_templates():
    lws = {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
           "metadata": {"name": "llm", "namespace": "ns", "labels": {OPT_IN: "kw"}},
           "spec": {"leaderWorkerTemplate": {"leaderTemplate": user_template(), "workerTemplate": user_template()}}}
    adm = admit(LEADERWORKERSET, lws, decide(LEADERWORKERSET, lws, [CR]))
    assert set(adm.templates) == set(LEADERWORKERSET.template_paths)
    for path, t in adm.templates.items():
        assert t == injected_template(user_template(), adm.decision.body["spec"]["leaderWorkerTemplate"][path[-1]])


def test_missed_admission_says_why():
    assert "operator down" in missed_admission(CR, deployment(user_template()))
    assert "annotation only" in missed_admission(CR, deployment(user_template(), label_opt_in=False))
    changed = CRRecord("kw", "ns", generation=2, spec=CR.spec, observed_generation=1)
    assert missed_admission(changed, deployment(user_template())) is None  # the KernelWarmup changed: expected


def test_the_webhook_never_tells_an_owner_to_opt_into_a_kernelwarmup_that_selects_them():
    """Issue 25, Low: a workload opted into its own KernelWarmup and selected by another got
    a Warning with the command to opt into the other one (anyone who may create a
    KernelWarmup could have it shown to the workload's owner)."""
    from warmup_operator.core.admission import admit
    from warmup_operator.core.trust import OPT_IN

    obj = deployment(user_template())
    obj["metadata"].setdefault("annotations", {})[OPT_IN] = "their-kw"
    evil = CRRecord(name="evil", namespace=CR.namespace, uid="e", created=CR.created, spec=CR.spec)
    adm = admit(DEPLOYMENT, obj, decide(DEPLOYMENT, obj, [evil]))
    assert not adm.templates and "'evil'" in adm.note and "did not opt into it" in adm.note
    assert "kubectl" not in adm.note and "=evil" not in adm.note
