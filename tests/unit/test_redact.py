"""Env values (possible secrets) never reach a log, an Event or status: the redaction itself and the
reconciler's use of it on failed and successful applies (reliability)."""

from __future__ import annotations

import json
import logging

import pytest
from support.workloads import container, spec_doc, template

from warmup_operator.core.decide import CRRecord
from warmup_operator.core.kinds import DEPLOYMENT
from warmup_operator.reconcile import Controller
from warmup_operator.redact import REDACTED, env_literals, redact

pytestmark = pytest.mark.reliability


TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
SHORT_KEY = "k3y"


def workload_with_secrets():
    env = [{"name": "HF_TOKEN", "value": TOKEN}, {"name": "API_KEY", "value": SHORT_KEY},
           {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}},
           {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"}]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "llm", "namespace": "ns", "labels": {"app": "vllm"},
                         "annotations": {"kernelwarmup.dev/kernelwarmup": "kw"}},
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
