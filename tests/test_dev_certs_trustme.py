"""riskd over mutual TLS with certificates from trustme, not from ``riskd
dev-certs``: the identity is read from any CA's certificate (its DNS subject
alternative name), so the choice of riskd's own development CA
(docs/security.md, "A development CA") ties nobody to it. And what that choice
keeps: dev-certs gives clients only ``clientAuth``, the server only
``serverAuth``, and writes keys mode 0600, none of which trustme does."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from riskd.config import default_toml
from riskd.dev_certs import write_dev_set

from .api.conftest import start_daemon


def test_riskd_accepts_trustme_certificates_and_reads_their_identity(tmp_path: Path) -> None:
    from riskd.v1 import admin_pb2, admin_pb2_grpc

    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.crt")
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(tmp_path / "server.crt")
    server.private_key_pem.write_to_path(tmp_path / "server.key")
    config = tmp_path / "riskd.toml"
    config.write_text(
        default_toml().replace("plaintext = true", "")
        + f'\n[server.tls]\ncert = "{tmp_path / "server.crt"}"\n'
        f'key = "{tmp_path / "server.key"}"\nclient_ca = "{tmp_path / "ca.crt"}"\n'
        '\n[access.ops]\nroles = ["admin"]\n'
    )
    daemon = start_daemon(tmp_path, "--config", str(config))

    def check_state(identity: str) -> grpc.StatusCode:
        client = ca.issue_cert(identity)
        creds = grpc.ssl_channel_credentials(
            ca.cert_pem.bytes(), client.private_key_pem.bytes(), client.cert_chain_pems[0].bytes()
        )
        with grpc.secure_channel(daemon.target, creds) as ch:
            try:
                admin_pb2_grpc.AdminServiceStub(ch).CheckState(
                    admin_pb2.CheckStateRequest(), timeout=10
                )
            except grpc.RpcError as e:
                return e.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

    try:
        assert check_state("ops") == grpc.StatusCode.OK
        assert check_state("stranger") == grpc.StatusCode.PERMISSION_DENIED
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()


def usages(pem: bytes) -> set[x509.ObjectIdentifier]:
    cert = x509.load_pem_x509_certificate(pem)
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.mark.parametrize("maker", ["dev-certs", "trustme"])
def test_what_dev_certs_does_that_trustme_does_not(maker: str, tmp_path: Path) -> None:
    if maker == "dev-certs":
        write_dev_set(tmp_path, hosts=["localhost"], clients=["gateway-1"])
        client_pem = (tmp_path / "gateway-1.crt").read_bytes()
        server_pem = (tmp_path / "server.crt").read_bytes()
        key_modes = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("*.key")}
        assert usages(client_pem) == {ExtendedKeyUsageOID.CLIENT_AUTH}
        assert usages(server_pem) == {ExtendedKeyUsageOID.SERVER_AUTH}
        assert key_modes == {0o600}
    else:
        ca = trustme.CA()
        leaf = ca.issue_cert("gateway-1")
        assert ExtendedKeyUsageOID.SERVER_AUTH in usages(leaf.cert_chain_pems[0].bytes())
        assert ExtendedKeyUsageOID.CODE_SIGNING in usages(leaf.cert_chain_pems[0].bytes())
