"""Assemble the grpc.aio server: riskd's services, health and reflection."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from riskd.api.admin import AdminServicer
from riskd.api.auth import AuthInterceptor
from riskd.api.events import EventLog, EventServicer
from riskd.api.ingest import IngestServicer
from riskd.api.query import QueryServicer
from riskd.api.withdrawal import WithdrawalServicer
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    cluster_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    withdrawal_pb2,
    withdrawal_pb2_grpc,
)

__all__ = ["Services", "build_server", "server_options", "SERVICE_NAMES", "MAX_MESSAGE_BYTES"]

#: Largest gRPC message riskd receives or sends.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

SERVICE_NAMES = (
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
    withdrawal_pb2.DESCRIPTOR.services_by_name["WithdrawalService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


@dataclass(slots=True)
class Services:
    ingest: IngestServicer
    events: EventServicer
    query: QueryServicer
    withdrawal: WithdrawalServicer
    admin: AdminServicer
    log: EventLog
    #: ClusterService.Route on a cluster node that owns its shard (riskd.cluster.node).
    cluster: cluster_pb2_grpc.ClusterServiceServicer | None = None


def server_options(max_message_bytes: int, window_bytes: int) -> list[tuple[str, int]]:
    """The grpc.aio options of riskd's servers (the engine's, the ingest front end's)."""
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if window_bytes > 0:
        options += [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", window_bytes)]
    return options


async def build_server(
    services: Services,
    address: str,
    max_message_bytes: int,
    interceptor: AuthInterceptor,
    credentials: grpc.ServerCredentials | None,
    window_bytes: int = 0,
) -> tuple[grpc.aio.Server, int, health_aio.HealthServicer]:
    """Create, wire and bind the server (not started); returns the bound port.

    ``credentials`` None: plaintext (the config allows that on loopback only).
    ``window_bytes`` > 0 fixes each stream's HTTP/2 receive window: with
    gRPC's bandwidth-delay probing the window grows to megabytes on a fast
    link, and a gateway's writes pile up there (measured: 4 MB, 14 s of
    fills, per stream) after riskd has stopped reading; a fixed window makes
    flow control reach the gateway after that many bytes.
    """
    server = grpc.aio.server(
        interceptors=[interceptor], options=server_options(max_message_bytes, window_bytes)
    )
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(services.ingest, server)
    events_pb2_grpc.add_EventServiceServicer_to_server(services.events, server)
    query_pb2_grpc.add_QueryServiceServicer_to_server(services.query, server)
    withdrawal_pb2_grpc.add_WithdrawalServiceServicer_to_server(services.withdrawal, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(services.admin, server)
    if services.cluster is not None:
        cluster_pb2_grpc.add_ClusterServiceServicer_to_server(services.cluster, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *SERVICE_NAMES):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port, health
