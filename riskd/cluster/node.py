"""A clustered riskd node: wait for a shard's lease, then serve it; redirect meanwhile.

``riskd serve --storage postgresql://... --etcd http://e1:2379,... --advertise host:port``

1. Campaign for the shard's owner key in etcd (:mod:`riskd.cluster.ownership`).
   While another node owns it, this node's gRPC port, and its front-end
   port when ``[server] frontend_listen`` is set, answer as a standby
   (:class:`Standby`): ``ClusterService.Route`` names the owner, and every
   other call fails with UNAVAILABLE carrying the owner's address in the
   ``riskd-owner`` trailing metadata (the Python helper follows it): for an
   ``IngestService`` call the owner's ingest address (its front end), for
   any other its gRPC address.
2. Once it owns the shard: release those ports, open the PostgreSQL journal
   under the owner key's revision as epoch (which fences the previous
   owner), restore the newest snapshot, replay the journal tail, serve on
   the same ports (the daemon starts the front end, as on a single node).
3. Keep the lease alive; losing it stops the process (exit 4).  A clean stop
   revokes the lease, so a standby takes over at once instead of after ttl.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import structlog
import trio

from riskd.api.auth import server_credentials
from riskd.api.frontend_link import FrontendFailed, launch
from riskd.cluster.etcd import Etcd, EtcdUnavailable
from riskd.cluster.ownership import Keeper, Owner, Ownership, campaign, current_owner
from riskd.config import Config
from riskd.daemon import Daemon, StartupError, bind_error
from riskd.storage import postgres
from riskd.v1 import cluster_pb2, cluster_pb2_grpc

__all__ = [
    "OWNER_METADATA",
    "OwnerRoute",
    "RouteServicer",
    "Standby",
    "ingest_address",
    "serve_node",
    "shard_of",
]

log = structlog.get_logger("riskd")

#: Trailing metadata of a standby's UNAVAILABLE: the owner's advertised address.
OWNER_METADATA = "riskd-owner"
#: Calls that a standby sends to the owner's ingest address, not its gRPC one.
INGEST_METHODS = "/riskd.v1.IngestService/"


def shard_of(config: Config) -> str:
    """A node's shard: the settlement assets of its config, joined with "+"."""
    return "+".join(sorted(config.assets))


def _host_port(address: str) -> tuple[str, int] | None:
    host, colon, port = address.rpartition(":")
    if not colon or not host.strip("[]") or not port.isascii() or not port.isdigit():
        return None
    return host, int(port)


def _unspecified(host: str) -> bool:
    """Whether ``host`` is a wildcard (0.0.0.0, ::): a bind address, no one's to dial."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def ingest_address(advertise: str, frontend_listen: str, given: str | None) -> str:
    """Where gateways stream to this node (``--advertise-ingest``); ValueError
    naming the flag or key when that cannot be an address to advertise.

    ``given`` wins.  Without it and without a front end: ``advertise`` (its
    gRPC port serves ingest).  With a front end: ``frontend_listen`` when it
    names a host, else (0.0.0.0, ::) ``advertise``'s host with its port.
    """
    if given:
        parsed = _host_port(given)
        if parsed is None or not 1 <= parsed[1] <= 65_535:
            raise ValueError(f"--advertise-ingest must be host:port (port 1..65535), got {given!r}")
        if _unspecified(parsed[0]):
            raise ValueError(f"--advertise-ingest: {given!r} is a wildcard, no address to dial")
        return given
    if not frontend_listen:
        return advertise
    listen = _host_port(frontend_listen)
    assert listen is not None  # ServerConfig.check_transport checked it
    host, port = listen
    if port == 0:
        # The standby holds the port and the owner's front end binds it again:
        # an ephemeral one would be a different port each time.
        raise ValueError(
            "server.frontend_listen: a cluster node (--etcd) needs a fixed port, not 0"
        )
    if not _unspecified(host):
        return frontend_listen
    own = _host_port(advertise)
    if own is None or _unspecified(own[0]):
        raise ValueError(
            f"server.frontend_listen {frontend_listen!r} binds every address: set"
            " --advertise-ingest (or --advertise) to the host gateways reach"
        )
    return f"{own[0]}:{port}"


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
            address=owner.address,
            shard=self.shard,
            epoch=owner.epoch,
            ingest_address=owner.ingest,
        )


class OwnerRoute(cluster_pb2_grpc.ClusterServiceServicer):
    """The owner's answer: itself (it serves only while it holds the lease)."""

    def __init__(self, ownership: Ownership, config: Config) -> None:
        self.answer = cluster_pb2.RouteResponse(
            address=ownership.address,
            shard=ownership.shard,
            epoch=ownership.epoch,
            ingest_address=ownership.ingest or ownership.address,
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
    """Every call other than Route: UNAVAILABLE, naming the owner (where the
    call belongs: IngestService to its ingest address)."""

    def __init__(self, owner: Callable[[], Owner | None]) -> None:
        self.owner = owner

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        ingest = str(handler_call_details.method).startswith(INGEST_METHODS)

        def refuse(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            owner = self.owner()
            address = "" if owner is None else owner.ingest if ingest else owner.address
            if address:
                context.set_trailing_metadata(((OWNER_METADATA, address),))
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"this riskd node is a standby; the owner is {address or 'being elected'}",
            )

        return grpc.stream_stream_rpc_method_handler(refuse)


class Standby:
    """The ports of a node that does not own its shard (yet): the gRPC one and,
    with a front end, the front end's (one server, so they open and close together)."""

    def __init__(
        self,
        listen: dict[str, str],
        route: RouteServicer,
        credentials: Callable[[], grpc.ServerCredentials] | None,
    ) -> None:
        self.owner: Owner | None = None
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        cluster_pb2_grpc.add_ClusterServiceServicer_to_server(route, self._server)
        self._server.add_generic_rpc_handlers((_Redirect(lambda: self.owner),))
        for key, address in listen.items():
            try:
                if credentials is None:
                    port = self._server.add_insecure_port(address)
                else:  # the owner's mutual TLS: only holders of the CA's certificates get an answer
                    # One per port: a port's first fetch of reloadable credentials
                    # must see the files (a second port's would be "no change").
                    port = self._server.add_secure_port(address, credentials())
            except (OSError, RuntimeError) as e:  # grpc says only "Failed to bind"
                why = bind_error(address) or str(e)
                raise StartupError(f"cannot listen on {key} {address}: {why}") from e
            if port == 0:
                why = bind_error(address) or "not available"
                raise StartupError(f"cannot listen on {key} {address}: {why}")

    def start(self) -> None:
        self._server.start()

    def waiting(self, owner: Owner | None) -> None:
        if owner != self.owner:
            log.info(
                "riskd_standby",
                owner=None if owner is None else owner.address,
                ingest=None if owner is None else owner.ingest,
            )
        self.owner = owner

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
    advertise_ingest: str = "",
) -> None:
    """Campaign, then serve the shard (default: :func:`shard_of`) as its owner.

    ``advertise_ingest``: where gateways stream to this node (its front end);
    empty: ``advertise``.
    """
    shard = shard or shard_of(config)
    srv = config.server
    tls = srv.tls
    credentials = None if tls is None else partial(server_credentials, tls)
    try:
        if credentials is not None:
            credentials()  # the files read once here: one line if they cannot be
    except (OSError, ValueError) as e:
        raise StartupError(f"cannot read the TLS files of [server.tls]: {e}") from e
    listen = {"server.grpc_listen": srv.grpc_listen}
    if srv.frontend_listen:
        listen["server.frontend_listen"] = srv.frontend_listen
    standby = Standby(listen, RouteServicer(etcd, shard, config), credentials)
    # A front end started now waits, its imports done, for the takeover to
    # configure it: measured, a takeover served ~0.4 s later when the daemon
    # started it only then (benchmarks/failover.py --frontend, docs/cluster.md).
    try:
        ahead = launch() if srv.frontend_listen else None
    except FrontendFailed as e:
        raise StartupError(str(e)) from e
    try:
        standby.start()
        try:
            ownership = await _campaign_until_signalled(
                etcd,
                partial(
                    campaign,
                    etcd,
                    shard,
                    advertise,
                    ttl,
                    waiting=standby.waiting,
                    ingest=advertise_ingest,
                ),
            )
        finally:
            standby.stop()  # its ports, released for the daemon to bind
        if ownership is None:
            return
        log.info(
            "riskd_owner",
            shard=shard,
            epoch=ownership.epoch,
            address=advertise,
            ingest=ownership.ingest or advertise,
        )
        keeper = Keeper(etcd, ownership)
        keeper.start()
        try:
            daemon = Daemon(config, config_path=config_path)
            daemon.frontend_ahead = ahead
            daemon.route = OwnerRoute(ownership, config)
            daemon.open_journal = postgres.opener(dsn, shard, ownership.epoch, list(config.assets))
            daemon.snapshot_written = partial(_push, daemon)
            await daemon.run()
        finally:
            keeper.release()
    finally:
        if ahead is not None:  # never configured, or the daemon is done with it
            ahead.kill()


async def _campaign_until_signalled(etcd: Etcd, run: Callable[..., Ownership]) -> Ownership | None:
    """``run(stop=...)`` in a thread until it wins; None once SIGTERM or SIGINT
    stopped it (a standby stops cleanly, exit 0, as the owner does).  Won just as
    the signal came: the lease is revoked at once, so the next standby need not
    wait out its ttl for an owner that is leaving."""
    stop = threading.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("riskd_standby_stopping", signal=signal.Signals(signum).name)
                    stop.set()
                    return

            nursery.start_soon(stop_on_signal)
            try:
                # Not abandoned: a campaign left running could still win the lease.
                ownership: Ownership | None = await trio.to_thread.run_sync(partial(run, stop=stop))
            except EtcdUnavailable:
                if not stop.is_set():
                    raise
                ownership = None
            nursery.cancel_scope.cancel()
    if ownership is not None and stop.is_set():
        with contextlib.suppress(EtcdUnavailable):  # else it expires within ttl
            etcd.revoke(ownership.lease)
        return None
    return ownership


def _push(daemon: Any, data: Path, records: int, head: str, state: dict[str, Any]) -> None:
    """Store a snapshot written in process (a clean stop) in the database."""
    journal = daemon.sequencer.journal.journal
    if isinstance(journal, postgres.PostgresJournal):
        retention = daemon.config.server.event_retention
        postgres.push_snapshot(journal, data, records, head, state, retention)
