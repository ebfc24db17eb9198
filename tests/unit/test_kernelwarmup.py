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



@pytest.mark.parametrize("mount", ["/etc", "/etc/kw", "/usr/lib/python3/dist-packages", "/dev/shm/x", "/var",
                                   "/opt/venv/lib/python3.12/site-packages/kw", "/opt", "/root/.cache",
                                   "/app/.venv", "/srv/py/site-packages", "/usr/local/lib/kw", "/run/kw"])
def test_a_cache_mount_that_hides_the_images_own_files_is_refused(mount):
    """Issue 25 item 4: mounted there, the cache volume would hide system files, Python's
    packages or a model folder the image ships from the server (Ready would stay True)."""
    with pytest.raises(SpecInvalid) as ei:
        parse_spec(spec_doc(cache={"mountPath": mount}))
    assert ei.value.field == "spec.cache.mountPath" and "would hide" in ei.value.message


@pytest.mark.parametrize("mount", ["/kernel-warmup-cache", "/cache", "/root/.cache/kernel-warmup", "/data/kw",
                                   "/opt/kw-cache", "/tmp/kw", "/var/cache/kw"])
def test_a_cache_folder_of_its_own_is_accepted(mount):
    assert parse_spec(spec_doc(cache={"mountPath": mount})).cache.mount_path == mount
