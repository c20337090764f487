"""A clustered riskd node: wait for a shard's lease, then serve it; redirect meanwhile.

``riskd serve --storage postgresql://... --etcd http://e1:2379,... --advertise host:port``

1. Campaign for the shard's owner key in etcd (:mod:`riskd.cluster.ownership`).
   While another node owns it, this node's gRPC port answers as a standby
   (:class:`Standby`): ``ClusterService.Route`` names the owner, and every
   other call fails with UNAVAILABLE carrying the owner's address in the
   ``riskd-owner`` trailing metadata (the Python helper follows it).
2. Once it owns the shard: open the PostgreSQL journal under the owner key's
   revision as epoch (which fences the previous owner), restore the newest
   snapshot, replay the journal tail, serve on the same port.
3. Keep the lease alive; losing it stops the process (exit 4).  A clean stop
   revokes the lease, so a standby takes over at once instead of after ttl.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import structlog
import trio

from riskd.api.auth import server_credentials
from riskd.cluster.etcd import Etcd, EtcdUnavailable, KeyValue
from riskd.cluster.ownership import Keeper, Ownership, campaign, current_owner
from riskd.config import Config
from riskd.storage import postgres
from riskd.v1 import cluster_pb2, cluster_pb2_grpc

__all__ = ["OWNER_METADATA", "OwnerRoute", "RouteServicer", "Standby", "serve_node", "shard_of"]

log = structlog.get_logger("riskd")

#: Trailing metadata of a standby's UNAVAILABLE: the owner's advertised address.
OWNER_METADATA = "riskd-owner"


def shard_of(config: Config) -> str:
    """A node's shard: the settlement assets of its config, joined with "+"."""
    return "+".join(sorted(config.assets))


def _refusal(
    request: cluster_pb2.RouteRequest, config: Config
) -> tuple[grpc.StatusCode, str] | None:
    """Why ``request`` names nothing this shard serves; None if it names something."""
    if bool(request.asset) == bool(request.market):
        return grpc.StatusCode.INVALID_ARGUMENT, "set exactly one of asset and market"
    if request.asset and request.asset not in config.assets:
        return grpc.StatusCode.NOT_FOUND, f"asset: {request.asset!r} is not served here"
    if request.market and request.market not in {m.symbol for m in config.markets}:
        return grpc.StatusCode.NOT_FOUND, f"market: {request.market!r} is not served here"
    return None


class RouteServicer(cluster_pb2_grpc.ClusterServiceServicer):
    """A standby's answer: the owner etcd names now."""

    def __init__(self, etcd: Etcd, shard: str, config: Config) -> None:
        self.etcd = etcd
        self.shard = shard
        self.config = config

    def Route(
        self, request: cluster_pb2.RouteRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.RouteResponse:
        refused = _refusal(request, self.config)
        if refused is not None:
            context.abort(*refused)
        try:
            owner = current_owner(self.etcd, self.shard)
        except EtcdUnavailable:
            owner = None
        if owner is None:
            context.abort(
                grpc.StatusCode.UNAVAILABLE, f"shard {self.shard}: no owner now (a takeover?)"
            )
        assert owner is not None
        return cluster_pb2.RouteResponse(
            address=owner.value, shard=self.shard, epoch=owner.create_revision
        )


class OwnerRoute(cluster_pb2_grpc.ClusterServiceServicer):
    """The owner's answer: itself (it serves only while it holds the lease)."""

    def __init__(self, ownership: Ownership, config: Config) -> None:
        self.answer = cluster_pb2.RouteResponse(
            address=ownership.address, shard=ownership.shard, epoch=ownership.epoch
        )
        self.config = config

    async def Route(  # grpc.aio: a coroutine
        self, request: cluster_pb2.RouteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cluster_pb2.RouteResponse:
        refused = _refusal(request, self.config)
        if refused is not None:
            await context.abort(*refused)
        return self.answer


class _Redirect(grpc.GenericRpcHandler):
    """Every call other than Route: UNAVAILABLE, naming the owner."""

    def __init__(self, owner: Callable[[], str]) -> None:
        self.owner = owner

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        def refuse(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            address = self.owner()
            if address:
                context.set_trailing_metadata(((OWNER_METADATA, address),))
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"this riskd node is a standby; the owner is {address or 'being elected'}",
            )

        return grpc.stream_stream_rpc_method_handler(refuse)


class Standby:
    """The gRPC port of a node that does not own its shard (yet)."""

    def __init__(
        self, listen: str, route: RouteServicer, credentials: grpc.ServerCredentials | None
    ) -> None:
        self.owner = ""
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        cluster_pb2_grpc.add_ClusterServiceServicer_to_server(route, self._server)
        self._server.add_generic_rpc_handlers((_Redirect(lambda: self.owner),))
        if credentials is None:
            self.port = self._server.add_insecure_port(listen)
        else:  # the owner's mutual TLS: only holders of the CA's certificates get an answer
            self.port = self._server.add_secure_port(listen, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")

    def start(self) -> None:
        self._server.start()

    def waiting(self, owner: KeyValue | None) -> None:
        address = "" if owner is None else owner.value
        if address != self.owner:
            log.info("riskd_standby", owner=address or None)
        self.owner = address

    def stop(self) -> None:
        self._server.stop(0).wait()


async def serve_node(
    config: Config,
    config_path: str | None,
    dsn: str,
    etcd: Etcd,
    advertise: str,
    ttl: int,
    shard: str | None = None,
) -> None:
    """Campaign, then serve the shard (default: :func:`shard_of`) as its owner."""
    from riskd.daemon import Daemon, StartupError

    shard = shard or shard_of(config)
    srv = config.server
    try:
        credentials = None if srv.tls is None else server_credentials(srv.tls)
    except (OSError, ValueError) as e:
        raise StartupError(f"cannot read the TLS files of [server.tls]: {e}") from e
    try:
        standby = Standby(srv.grpc_listen, RouteServicer(etcd, shard, config), credentials)
    except (OSError, RuntimeError) as e:
        raise StartupError(f"cannot listen on server.grpc_listen {srv.grpc_listen}: {e}") from e
    standby.start()
    try:
        ownership = await trio.to_thread.run_sync(
            partial(campaign, etcd, shard, advertise, ttl, waiting=standby.waiting),
            abandon_on_cancel=True,
        )
    finally:
        standby.stop()
    log.info("riskd_owner", shard=shard, epoch=ownership.epoch, address=advertise)
    keeper = Keeper(etcd, ownership)
    keeper.start()
    try:
        daemon = Daemon(config, config_path=config_path)
        daemon.route = OwnerRoute(ownership, config)
        daemon.open_journal = postgres.opener(dsn, shard, ownership.epoch, list(config.assets))
        daemon.snapshot_written = partial(_push, daemon)
        await daemon.run()
    finally:
        keeper.release()


def _push(daemon: Any, data: Path, records: int, head: str, state: dict[str, Any]) -> None:
    """Store a snapshot written in process (a clean stop) in the database."""
    journal = daemon.sequencer.journal.journal
    if isinstance(journal, postgres.PostgresJournal):
        retention = daemon.config.server.event_retention
        postgres.push_snapshot(journal, data, records, head, state, retention)
