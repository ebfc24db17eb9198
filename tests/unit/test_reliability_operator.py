"""Operator hardening without a cluster: hostile CR values, exec-form commands only,
security contexts, the API retry policy (fake transport), secrets kept out of logs.

Schema-level rejections are in tests/integration/test_operator_e2e.py (BAD_SPECS, through
the real API server); injection errors already tabled in test_operator_inject.py (no GPU
container, exact mount collision, user TRITON_CACHE_DIR) are not repeated.
"""

from __future__ import annotations

import json
import logging

import pytest

from kernel_warmer.cli import build_parser, spec_from_args
from kernel_warmer.spec import SPEC_ENV, WarmerSpec
from warmup_operator.core import names
from warmup_operator.core.containers import InjectionError, warmer_security_context
from warmup_operator.core.decide import CRRecord
from warmup_operator.core.inject import build_injection
from warmup_operator.core.kernelwarmup import SpecInvalid, parse_spec
from warmup_operator.core.kinds import DEPLOYMENT
from warmup_operator.kube import Kube, RetryPolicy, is_retryable
from warmup_operator.reconcile import Controller
from warmup_operator.redact import REDACTED, env_literals, redact


def spec_doc(**over):
    base = {"targets": {"selector": {"matchLabels": {"app": "vllm"}}}, "model": {"configPath": "/models/m/config.json"}}
    base.update(over)
    return base


def container(name="vllm", gpus=1, **extra):
    c = {"name": name, "image": "vllm/vllm-openai:v0.11.0", "args": ["--model", "/models/m"]}
    if gpus:
        c["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    c.update(extra)
    return c


def template(*containers, **spec_extra):
    return {"metadata": {"labels": {"app": "vllm"}}, "spec": {"containers": list(containers), **spec_extra}}


def by_name(items, name):
    return next(i for i in items if i["name"] == name)


# --- hostile CR values -----------------------------------------------------------------------

HOSTILE_CONTAINER = [
    ("image-semicolon", {"image": "vllm; rm -rf /"}, "spec.warmer.image"),
    ("image-subshell", {"image": "$(curl evil)"}, "spec.warmer.image"),
    ("image-backtick", {"image": "vllm:`id`"}, "spec.warmer.image"),
    ("image-space", {"image": "vllm --privileged"}, "spec.warmer.image"),
    ("image-newline", {"image": "vllm\nrm"}, "spec.warmer.image"),
    ("image-leading-dash", {"image": "-v/:/host"}, "spec.warmer.image"),
    ("image-pipe", {"image": "vllm|sh"}, "spec.warmer.image"),
    ("bootstrap-image-amp", {"bootstrapImage": "boot&&id"}, "spec.warmer.bootstrapImage"),
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


def test_valid_image_references_pass():
    for ref in ("vllm/vllm-openai:v0.11.0", "registry.local:5000/a/b@sha256:" + "a" * 64, "ghcr.io/x/y_z-1.2:tag"):
        assert parse_spec(spec_doc(warmer={"image": ref})).container.image == ref


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


def test_selector_matching_a_non_gpu_workload_is_reported_not_injected():
    """A selector that also matches, say, a CPU-only web frontend: that workload gets an
    error naming spec.servingContainer in the CR's status, and no change."""
    from warmup_operator.core.decide import decide
    obj = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "frontend", "namespace": "ns", "labels": {"app": "vllm"}},
           "spec": {"template": template(container("web", gpus=0))}}
    kw = CRRecord("kw", "ns", uid="u1", created="2026-01-01T00:00:00Z",
                  spec=spec_doc(targets={"selector": {"matchLabels": {"app": "vllm"}}}))
    d = decide(DEPLOYMENT, obj, [kw])
    assert d.action == "none" and d.error is not None and d.error.field == "spec.servingContainer"


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


# --- API retry policy (fake transport) -------------------------------------------------------------


class FakeResp:
    def __init__(self, status, body=b"{}", headers=None):
        self.status, self.reason, self._body, self.headers = status, {200: "OK", 409: "Conflict", 422: "Unprocessable",
                                                                        429: "Too Many Requests", 500: "Internal",
                                                                        503: "Unavailable"}.get(status, "?"), body, headers or {}

    def read(self):
        return self._body


class FakeClient:
    """Stands in for kubernetes.client.ApiClient: answers from a script."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def param_serialize(self, method, path, query_params, header_params, auth_settings):
        return method, path, header_params, None, None

    def call_api(self, method, url, header_params, body, _request_timeout):
        self.calls.append((method, url))
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def kube_with(script, **policy):
    sleeps = []
    k = Kube(FakeClient(script), retry=RetryPolicy(**policy), sleep=sleeps.append)
    return k, sleeps


def test_5xx_is_retried_with_growing_delays_then_succeeds():
    k, sleeps = kube_with([FakeResp(503), FakeResp(500), FakeResp(200, b'{"ok": 1}')], jitter=0)
    assert k._call("GET", "/x") == {"ok": 1}
    assert len(k.client.calls) == 3 and sleeps == [0.2, 0.4]


def test_409_conflict_is_retried():
    k, sleeps = kube_with([FakeResp(409, b'{"reason":"Conflict"}'), FakeResp(200)], jitter=0)
    assert k._call("PATCH", "/x", body={}) == {}
    assert len(sleeps) == 1


def test_422_and_404_are_not_retried():
    import kubernetes
    for status in (422, 404, 400, 403):
        k, sleeps = kube_with([FakeResp(status, b'{"message":"bad"}'), FakeResp(200)])
        with pytest.raises(kubernetes.client.exceptions.ApiException) as ei:
            k._call("PATCH", "/x", body={})
        assert ei.value.status == status and len(k.client.calls) == 1 and sleeps == []


def test_429_honours_retry_after_capped():
    k, sleeps = kube_with([FakeResp(429, headers={"Retry-After": "2"}), FakeResp(429, headers={"Retry-After": "3600"}),
                           FakeResp(200)], cap_s=5.0)
    k._call("GET", "/x")
    assert sleeps == [2.0, 5.0]


def test_dropped_connection_is_retried():
    import urllib3
    k, sleeps = kube_with([urllib3.exceptions.ProtocolError("Connection aborted"), ConnectionResetError(),
                           FakeResp(200)], jitter=0)
    assert k._call("GET", "/x") == {}
    assert len(sleeps) == 2


def test_persistent_5xx_gives_up_after_the_attempts_and_total_stays_bounded():
    import kubernetes
    k, sleeps = kube_with([FakeResp(503)] * 10, attempts=5)
    with pytest.raises(kubernetes.client.exceptions.ApiException) as ei:
        k._call("GET", "/x")
    assert ei.value.status == 503 and len(k.client.calls) == 5 and len(sleeps) == 4
    assert sum(sleeps) <= 0.2 + 0.4 + 0.8 + 1.6


def test_delays_are_jittered_within_bounds_and_capped():
    p = RetryPolicy(base_s=1.0, cap_s=4.0, jitter=0.5)
    for attempt in range(8):
        lo, hi = p.delay(attempt, rand=lambda: 1.0), p.delay(attempt, rand=lambda: 0.0)
        assert hi == min(4.0, 2.0 ** attempt) and lo == hi / 2


def test_retryable_classification():
    class E(Exception):
        def __init__(self, status):
            self.status = status
    assert [is_retryable(E(s)) for s in (409, 429, 500, 502, 503, 504)] == [True] * 6
    assert [is_retryable(E(s)) for s in (400, 401, 403, 404, 410, 422)] == [False] * 6
    assert is_retryable(ConnectionRefusedError()) and not is_retryable(KeyError("x"))


# --- secrets never logged ----------------------------------------------------------------------------

TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
SHORT_KEY = "k3y"


def workload_with_secrets():
    env = [{"name": "HF_TOKEN", "value": TOKEN}, {"name": "API_KEY", "value": SHORT_KEY},
           {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}},
           {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"}]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "llm", "namespace": "ns", "labels": {"app": "vllm"}},
            "spec": {"template": template(container(env=env))}}


def test_env_literals_and_redaction():
    obj = workload_with_secrets()
    secrets = env_literals(DEPLOYMENT, obj)
    assert TOKEN in secrets and SHORT_KEY in secrets and "INFO" not in secrets
    body = json.dumps({"message": f'Deployment "llm" is invalid: env[0].value: Invalid value: "{TOKEN}" and {SHORT_KEY}'})
    out = redact(body, secrets)
    assert TOKEN not in out and SHORT_KEY not in out and REDACTED in out and "Invalid value" in out
    assert redact(f'value "{TOKEN}\\u0026x"', [TOKEN + "&x"]) == f'value "{REDACTED}"'


def test_apply_failure_echoing_the_object_never_logs_or_emits_a_secret(caplog):
    import kubernetes
    obj = workload_with_secrets()

    class EchoingKube:
        def get_workload(self, kind, ns, name):
            return obj

        def apply(self, kind, ns, name, body):
            raise kubernetes.client.exceptions.ApiException(
                status=422, reason="Unprocessable Entity",
                body=json.dumps({"kind": "Status", "message": f"spec.template: Invalid value: {json.dumps(body)}"}))

        def get_crd(self, name):
            return None

    events = []
    ctl = Controller(EchoingKube(), emit=lambda *a: events.append(a))
    kw = CRRecord("kw", "ns", uid="u1", created="2026-01-01T00:00:00Z", spec=spec_doc())
    with caplog.at_level(logging.DEBUG):
        out = ctl.reconcile_workload(DEPLOYMENT, obj, [kw])
    assert "Unprocessable" in out.error
    assert "Invalid value" in out.error and REDACTED in out.error  # the useful part is kept
    for text in [out.error, caplog.text, json.dumps(events)]:
        assert TOKEN not in text and SHORT_KEY not in text


def test_successful_injection_logs_and_events_carry_no_env_values(caplog):
    obj = workload_with_secrets()

    class OkKube:
        def get_workload(self, kind, ns, name):
            return obj

        def apply(self, kind, ns, name, body):
            return body

        def get_crd(self, name):
            return None

    events = []
    ctl = Controller(OkKube(), emit=lambda *a: events.append(a))
    kw = CRRecord("kw", "ns", uid="u1", created="2026-01-01T00:00:00Z", spec=spec_doc())
    with caplog.at_level(logging.DEBUG):
        out = ctl.reconcile_workload(DEPLOYMENT, obj, [kw])
    assert out.applied and events
    for text in [caplog.text, json.dumps(events)]:
        assert TOKEN not in text and SHORT_KEY not in text
