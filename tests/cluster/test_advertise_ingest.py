"""Where a cluster node tells gateways to stream (``--advertise-ingest``)."""

from __future__ import annotations

import re

import pytest

from riskd.cluster.node import ingest_address


@pytest.mark.parametrize(
    ("advertise", "frontend_listen", "given", "expected"),
    [
        # No front end: the gRPC port serves ingest.
        ("node-a:50051", "", None, "node-a:50051"),
        # A front end bound to a named address: that address.
        ("node-a:50051", "10.0.0.5:50052", None, "10.0.0.5:50052"),
        # Bound to every address: the advertised host, the front end's port.
        ("node-a:50051", "0.0.0.0:50052", None, "node-a:50052"),
        ("[2001:db8::5]:50051", "[::]:50052", None, "[2001:db8::5]:50052"),
        # Given: taken as it is (a proxy in front, another name).
        ("node-a:50051", "0.0.0.0:50052", "ingest-a.example:443", "ingest-a.example:443"),
        ("node-a:50051", "", "ingest-a.example:443", "ingest-a.example:443"),
    ],
)
def test_the_ingest_address(
    advertise: str, frontend_listen: str, given: str | None, expected: str
) -> None:
    assert ingest_address(advertise, frontend_listen, given) == expected


@pytest.mark.parametrize(
    ("advertise", "frontend_listen", "given", "why"),
    [
        ("node-a:50051", "127.0.0.1:0", None, "server.frontend_listen: a cluster node (--etcd)"
         " needs a fixed port, not 0"),
        ("0.0.0.0:50051", "0.0.0.0:50052", None, "set --advertise-ingest"),
        ("node-a:50051", "", "0.0.0.0:50052", "--advertise-ingest: '0.0.0.0:50052' is a wildcard"),
        ("node-a:50051", "", "ingest-a", "--advertise-ingest must be host:port"),
        ("node-a:50051", "", "ingest-a:0", "--advertise-ingest must be host:port"),
    ],
)  # fmt: skip
def test_what_cannot_be_advertised_is_refused(
    advertise: str, frontend_listen: str, given: str | None, why: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        ingest_address(advertise, frontend_listen, given)
