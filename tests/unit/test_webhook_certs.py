"""certs.py: the webhook's own CA and serving certificate, and the caBundle merge; the
webhook's flags in OperatorConfig."""

from __future__ import annotations

import base64
import ssl

import pytest

from warmup_operator import certs
from warmup_operator.config import OperatorConfig


def test_the_serving_certificate_is_signed_by_its_ca_for_every_name():
    from cryptography import x509

    made = certs.make_serving_cert(["kw-webhook.ns.svc", "127.0.0.1"])
    cert, ca = x509.load_pem_x509_certificate(made.cert_pem), x509.load_pem_x509_certificate(made.ca_pem)
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["kw-webhook.ns.svc"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    # what the TLS server and the API server do with them
    certfile, keyfile = certs.write_private(made)
    assert oct(keyfile.stat().st_mode & 0o777) == "0o600" and oct(keyfile.parent.stat().st_mode & 0o777) == "0o700"
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    ssl.create_default_context(cadata=made.ca_pem.decode())


def test_no_names_is_a_clear_error():
    with pytest.raises(ValueError, match="DNS name or IP"):
        certs.make_serving_cert([""])


def pem(n: int) -> bytes:
    body = base64.b64encode(bytes([n]) * 30).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()


def test_the_bundle_trusts_ours_keeps_a_few_others_and_leaves_a_bundle_that_trusts_us_alone():
    empty = certs.merge_bundle("", pem(1))
    assert base64.b64decode(empty) == pem(1)
    others = base64.b64encode(b"".join(pem(i) for i in range(2, 20))).decode()
    merged = base64.b64decode(certs.merge_bundle(others, pem(1)))
    assert certs.split_pem(merged) == [pem(1)] + [pem(i) for i in range(2, 2 + certs.KEEP_CAS - 1)]
    b64 = base64.b64encode(merged).decode()
    assert certs.merge_bundle(b64, pem(5)) == b64  # already trusted: replicas do not take turns
    assert base64.b64decode(certs.merge_bundle("not base64!", pem(1))) == pem(1)


def test_webhook_flags_and_environment():
    cfg = OperatorConfig.from_args(["--webhook-port", "9443", "--webhook-host", "svc.ns.svc", "--webhook-configuration",
                                    "kw"], env={"POD_IP": "10.1.2.3"})
    assert cfg.webhook.enabled and cfg.webhook.bind == "10.1.2.3" and cfg.webhook.cert_hosts == ("svc.ns.svc",)
    assert cfg.webhook.configuration == "kw" and cfg.webhook.cert_dir == ""
    env = OperatorConfig.from_env({"KERNEL_WARMUP_WEBHOOK_PORT": "8443", "KERNEL_WARMUP_WEBHOOK_HOSTS": "a, b",
                                   "KERNEL_WARMUP_WEBHOOK_CERT_DIR": "/tls"}).webhook
    assert (env.port, env.hosts, env.cert_dir, env.cert_hosts) == (8443, ("a", "b"), "/tls", ("a", "b"))
    off = OperatorConfig.from_args([], env={})
    assert not off.webhook.enabled and off.webhook.cert_hosts == ("127.0.0.1",)
