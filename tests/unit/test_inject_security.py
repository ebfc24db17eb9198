"""Injection hardening: exec-form commands only with values verbatim, mount paths compared as the
kubelet resolves them, the warmer's and the bootstrap's security contexts (reliability cases;
the plain injection tables are in test_inject.py)."""

from __future__ import annotations

import json

import pytest
from support.workloads import container, spec_doc, template

from kernel_warmer.cli import build_parser, spec_from_args
from kernel_warmer.spec import SPEC_ENV, WarmerSpec
from warmup_operator.core import names
from warmup_operator.core.containers import InjectionError, warmer_security_context
from warmup_operator.core.inject import build_injection
from warmup_operator.core.kernelwarmup import parse_spec

pytestmark = pytest.mark.reliability


def by_name(items, name):
    return next(i for i in items if i["name"] == name)


HOSTILE_PATH = "/models/$(reboot);`id`|x&y 'q\" $HOME/config.json"


def test_nothing_from_a_cr_reaches_a_shell_and_values_arrive_verbatim():
    s = parse_spec(spec_doc(model={"configPath": HOSTILE_PATH}, warmer={"python": "/opt/py-3.12/bin/python3"}))
    frag = build_injection(s, template(container()), cr_name="kw").fragment
    inits = frag["spec"]["initContainers"]
    for c in inits:
        assert isinstance(c["command"], list) and "args" not in c, c
        assert not {"sh", "bash", "/bin/sh", "/bin/bash", "-c"} & set(c["command"]), c["command"]
    flat = json.dumps(frag)
    assert '"sh"' not in flat and '"-c"' not in flat
    warmer = by_name(inits, names.WARMER_CONTAINER)
    assert warmer["command"] == ["/opt/py-3.12/bin/python3", "-m", "kernel_warmer", "run", "--spec-env", SPEC_ENV]
    # The hostile path is one env value (JSON), and the warmer reads back exactly it.
    value = by_name(warmer["env"], SPEC_ENV)["value"]
    assert WarmerSpec.from_json(value).model.config_path == HOSTILE_PATH
    args = build_parser().parse_args(["check", "--spec-env", "HOSTILE"])
    import os
    os.environ["HOSTILE"] = value
    try:
        assert spec_from_args(args).model.config_path == HOSTILE_PATH
    finally:
        del os.environ["HOSTILE"]


MOUNT_COLLISIONS = [
    ("trailing-slashes", "/kernel-warmup-cache//", "spec.cache.mountPath"),
    ("dot-segments", "/x/../kernel-warmup-cache/.", "spec.cache.mountPath"),
    ("under-pkg-folder", "/kernel-warmup/python", "containers[vllm].volumeMounts"),
]


@pytest.mark.parametrize("case_id,user_mount,field", MOUNT_COLLISIONS, ids=[c[0] for c in MOUNT_COLLISIONS])
def test_mount_paths_colliding_after_normalisation(case_id, user_mount, field):
    t = template(container(volumeMounts=[{"name": "mine", "mountPath": user_mount}]),
                 volumes=[{"name": "mine", "emptyDir": {}}])
    with pytest.raises(InjectionError) as ei:
        build_injection(parse_spec(spec_doc()), t, cr_name="kw")
    assert ei.value.field == field, str(ei.value)


# --- security contexts ---------------------------------------------------------------------------


def test_bootstrap_runs_non_root_read_only_without_capabilities():
    frag = build_injection(parse_spec(spec_doc()), template(container()), cr_name="kw").fragment
    sc = by_name(frag["spec"]["initContainers"], names.BOOTSTRAP_CONTAINER)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}


SERVING_CONTEXTS = [
    ("none", None, {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"}}),
    ("non-root-read-only", {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True, "readOnlyRootFilesystem": True},
     {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True, "readOnlyRootFilesystem": True,
      "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}),
    ("privileged-with-caps", {"privileged": True, "capabilities": {"add": ["SYS_ADMIN", "IPC_LOCK"]},
                              "allowPrivilegeEscalation": True, "procMount": "Unmasked"},
     {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}),
    ("own-seccomp", {"seccompProfile": {"type": "Localhost", "localhostProfile": "vllm.json"}},
     {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
      "seccompProfile": {"type": "Localhost", "localhostProfile": "vllm.json"}}),
]


@pytest.mark.parametrize("case_id,serving,want", SERVING_CONTEXTS, ids=[c[0] for c in SERVING_CONTEXTS])
def test_warmer_takes_the_servers_identity_but_never_its_privileges(case_id, serving, want):
    assert warmer_security_context(serving) == want
    extra = {"securityContext": serving} if serving else {}
    frag = build_injection(parse_spec(spec_doc()), template(container(**extra)), cr_name="kw").fragment
    assert by_name(frag["spec"]["initContainers"], names.WARMER_CONTAINER)["securityContext"] == want
    # the serving container itself is never touched
    (serving_patch,) = frag["spec"]["containers"]
    assert "securityContext" not in serving_patch

