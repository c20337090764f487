"""Transport settings: TLS or explicit plaintext, and plaintext only on loopback."""

from __future__ import annotations

import pytest

from riskd.config import default_toml, is_loopback, parse

TLS = '\n[server.tls]\ncert = "s.crt"\nkey = "s.key"\nclient_ca = "ca.crt"\n'
ACCESS = '\n[access.gw]\nroles = ["gateway"]\nmarkets = ["*"]\n'


def test_the_embedded_default_is_plaintext_on_loopback() -> None:
    server = parse(default_toml()).server
    assert server.plaintext and server.tls is None and is_loopback(server.grpc_listen)


def test_no_transport_configured_is_refused() -> None:
    with pytest.raises(ValueError, match="no transport security"):
        parse(default_toml().replace("plaintext = true", ""))


def test_plaintext_off_loopback_is_refused() -> None:
    text = default_toml().replace('"127.0.0.1:50051"', '"0.0.0.0:50051"')
    with pytest.raises(ValueError, match="loopback"):
        parse(text)


def test_tls_and_plaintext_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        parse(default_toml() + TLS + ACCESS)


def test_tls_needs_an_access_policy() -> None:
    text = default_toml().replace("plaintext = true", "") + TLS
    with pytest.raises(ValueError, match="access"):
        parse(text)
    config = parse(text + ACCESS)
    assert config.server.tls is not None and config.access.grant("gw") is not None


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.9.9.9:1", True),
        ("[::1]:1", True),
        ("localhost:1", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        ("10.0.0.1:1", False),
        ("riskd.internal:1", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback
