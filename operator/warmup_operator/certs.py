"""The admission webhook's serving certificate, made by the operator itself (no network,
no external tool): a CA and a serving certificate signed by it, both ECDSA P-256, made in
memory at start-up with the ``cryptography`` package. The private keys never leave the
process except as a 0600 file in a private temporary folder that the TLS server loads.

The API server trusts the webhook through the configuration's ``caBundle``: each replica
puts its own CA there (``merge_bundle``), keeping the few most recent others, so replicas
that each made their own CA are all trusted and a stale CA (its key gone with its process)
trusts nothing."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# CAs kept in the caBundle: this replica's and the newest others (replicas, restarts).
KEEP_CAS = 8
VALID_DAYS = 3650  # a new CA and certificate at every start; the process never outlives this
PEM_END = "-----END CERTIFICATE-----"


@dataclass(frozen=True)
class ServingCert:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def make_serving_cert(hosts: Iterable[str]) -> ServingCert:
    """A fresh CA and a serving certificate for ``hosts`` (DNS names and IP addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    hosts = [h for h in dict.fromkeys(hosts) if h]
    if not hosts:
        raise ValueError("the webhook certificate needs at least one DNS name or IP address")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kernel-warmup webhook CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return ServingCert(ca.public_bytes(pem), cert.public_bytes(pem),
                       key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _san(host: str):
    from cryptography import x509
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_private(cert: ServingCert) -> tuple[Path, Path]:
    """The certificate and key as files for the TLS server, in a folder only we can read."""
    d = Path(tempfile.mkdtemp(prefix="kernel-warmup-webhook-"))
    os.chmod(d, 0o700)
    certfile, keyfile = d / "tls.crt", d / "tls.key"
    certfile.write_bytes(cert.cert_pem)
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.key_pem)
    return certfile, keyfile


def split_pem(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, each as its own PEM block."""
    text = bundle.decode("ascii", errors="replace")
    return [(part.strip() + "\n" + PEM_END + "\n").encode() for part in text.split(PEM_END) if "BEGIN" in part]


def merge_bundle(current_b64: str, ca_pem: bytes, keep: int = KEEP_CAS) -> str:
    """The caBundle (base64) trusting ``ca_pem``: as it is if it does already, else with
    ``ca_pem`` first and at most ``keep - 1`` of the others."""
    try:
        current = base64.b64decode(current_b64 or "", validate=True)
    except ValueError:
        current = b""  # not base64: replaced by ours
    mine, present = split_pem(ca_pem), split_pem(current)
    if all(c in present for c in mine):
        return current_b64  # already trusted: leave the order (replicas do not take turns)
    others = [c for c in present if c not in mine]
    return base64.b64encode(b"".join(mine + others[: max(0, keep - len(mine))])).decode("ascii")
