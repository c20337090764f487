"""A development certificate authority: ``riskd dev-certs DIR``.

Makes what mutual TLS needs to try riskd (and what the tests use): a CA, a
server certificate for the hosts riskd is reached at, and one client
certificate per identity, the identity being the certificate's common name
and its one DNS subject alternative name (what riskd matches against
``[access]``).  Keys are ECDSA P-256, written mode 0600.

For development and tests only: a production CA keeps its key offline and
issues certificates through the exchange's own PKI.

Not trustme: this is a command of the installed daemon, and it writes what
trustme does not (keys 0600, files named by identity, one usage per role);
docs/security.md has the comparison.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "make_ca", "issue", "write_dev_set"]


@dataclass(frozen=True, slots=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self.key_pem)
        return cert, key


def make_ca(name: str = "riskd development CA", days: int = 365) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued,
    name: str,
    *,
    server_hosts: Iterable[str] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A leaf certificate: a server's (``server_hosts`` given) or a client's named ``name``.

    ``not_before``/``not_after`` default to now ± a year; tests pass dates in
    the past to make an expired certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    hosts = list(server_hosts)
    names: list[x509.GeneralName] = []
    for h in hosts or [name]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if hosts else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def write_dev_set(
    directory: Path, clients: Iterable[str], hosts: Iterable[str] = ("localhost", "127.0.0.1")
) -> dict[str, tuple[Path, Path]]:
    """CA, server and client certificates in ``directory``: name → (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    written = {"ca": ca.write(directory, "ca")}
    written["server"] = issue(ca, "riskd", server_hosts=hosts).write(directory, "server")
    for client in clients:
        written[client] = issue(ca, client).write(directory, client)
    return written
