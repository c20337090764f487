"""The ingest front-end process: gRPC, checks and decoding off the engine's core.

``python -m riskd.api.frontend --fd N`` is started by the engine process
(:mod:`riskd.api.frontend_link`) when ``[server] frontend_listen`` is set.
It serves ``IngestService`` (the ``Ingest`` stream and the unary
``CheckOrder``) and gRPC health on that address, with the same transport
security and ``[access]`` policy as the engine's port, running the unchanged
:class:`~riskd.api.ingest.IngestServicer` against a :class:`RemotePortal`:
what the servicer would post to the sequencer goes over the socket ``N``
(:mod:`riskd.api.handoff`) and its answer comes back once the engine made it
durable, so an ack from here means what it means from the engine's port.

Lifetime: the first frame is the config; the process binds, reports its
port (or its one-line start-up failure) and serves.  A DRAIN frame (the
engine is stopping) drains the streams as the engine's own drain does,
answers DRAINED and exits 0.  The socket's end (the engine is gone) or a new
parent pid fails whatever is in flight with UNAVAILABLE and exits at once:
gateways reconnect to the restarted engine and resume from their acked
sequence.  SIGINT and SIGTERM are ignored: the engine, which shares the
terminal's (or the service manager's) signals, decides when this process
drains.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import grpc
import structlog
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from riskd import logs
from riskd.actors.sequencer import Sequencer
from riskd.api import handoff
from riskd.api.auth import Authenticator, AuthInterceptor, server_credentials
from riskd.api.bridge import Deliver, Portal, Unavailable
from riskd.api.handoff import Op
from riskd.api.ingest import IngestServicer
from riskd.api.server import MAX_MESSAGE_BYTES, server_options
from riskd.config import Config
from riskd.metrics import Metrics
from riskd.v1 import ingest_pb2, ingest_pb2_grpc

__all__ = ["main", "RemotePortal", "EngineLink", "DRAIN_SECONDS", "UNARY_LIMIT"]

log = structlog.get_logger("riskd.frontend")

#: As the engine's (riskd.daemon): how long a drain waits for streams to end.
DRAIN_SECONDS = 10.0
#: Unary writes (session opens, CheckOrders) in flight at once, as the engine's Portal.
UNARY_LIMIT = 64
#: How often the parent's pid is looked at (the socket's end usually says first).
PARENT_CHECK_SECONDS = 0.5
T = TypeVar("T")
HEALTH_NAMES = ("", ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name)


class EngineLink(asyncio.Protocol):
    """The front end's end of the socket: requests out, answers in, by request id."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._reader = handoff.FrameReader()
        self._ids = itertools.count(1)
        #: Per request id: how to decode its answer's value, and where it goes.
        self._pending: dict[int, tuple[Callable[[Any], object] | None, Deliver[Any]]] = {}
        self._out: list[tuple[Any, ...]] = []
        self._flush_scheduled = False
        self.closed = False
        self.ended = asyncio.Event()  # the engine is gone
        self.drain_asked = asyncio.Event()
        self.on_access: Callable[[Any], None] | None = None

    # --- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._reader.feed(data)
        except ValueError as e:
            log.error("frontend_link_broken", error=str(e))
            self.end()
            return
        pending = self._pending
        for m in messages:
            op = m[0]
            if op == Op.RESULT:
                entry = pending.pop(m[1], None)
                if entry is not None:
                    decode, deliver = entry
                    deliver(m[2] if decode is None else decode(m[2]), None)
            elif op == Op.ERROR:
                entry = pending.pop(m[1], None)
                if entry is not None:
                    entry[1](None, handoff.unmarshal_error(m[2]))
            elif op == Op.ACCESS:
                if self.on_access is not None:
                    self.on_access(pickle.loads(m[1]))
            elif op == Op.DRAIN:
                self.drain_asked.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.end()

    # --- requests ----------------------------------------------------------------

    def end(self) -> None:
        """The engine is gone: everything in flight (and after) fails UNAVAILABLE."""
        if self.closed:
            return
        self.closed = True
        gone = Unavailable("the engine has stopped")
        pending, self._pending = self._pending, {}
        for _decode, deliver in pending.values():
            deliver(None, gone)
        if self.transport is not None:
            self.transport.close()
        self.ended.set()

    def request(
        self,
        message: Callable[[int], tuple[Any, ...]],
        decode: Callable[[Any], object] | None,
        deliver: Deliver[Any],
    ) -> None:
        """Send ``message(id)``; its answer goes to ``deliver`` (decoded)."""
        if self.closed:
            deliver(None, Unavailable("the engine has stopped"))
            return
        rid = next(self._ids)
        self._pending[rid] = (decode, deliver)
        self.send(message(rid))

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue a message; those queued in one turn of the loop go in one write."""
        if self.closed:
            return
        self._out.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self.transport is not None and not self.closed:
            self.transport.write(handoff.pack(out))


class RemoteSequencer:
    """Stands in for the :class:`Sequencer` in the front end: IngestServicer only
    names its methods (to the portal), which :class:`RemotePortal` forwards."""

    async def open_session(self, gateway: str, epoch: int) -> None:
        raise AssertionError("forwarded by RemotePortal, never called")

    async def ingest_group(self, posted: object) -> None:
        raise AssertionError("forwarded by RemotePortal, never called")

    async def flushed(self) -> None:
        raise AssertionError("forwarded by RemotePortal, never called")

    async def check_orders(self, checks: object) -> None:
        raise AssertionError("forwarded by RemotePortal, never called")


class RemotePortal:
    """What :class:`IngestServicer` uses of :class:`~riskd.api.bridge.Portal`,
    forwarded to the engine process; answers arrive once durable there."""

    def __init__(self, link: EngineLink, limit: int) -> None:
        self.link = link
        self._slots = asyncio.Semaphore(limit)

    async def write(self, actor: object, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if fn.__name__ != "open_session":
            raise AssertionError(f"the front end does not forward {fn.__name__}")
        gateway, epoch = args
        return await self._awaited(
            lambda rid: (Op.OPEN, rid, gateway, epoch), handoff.unmarshal_resume
        )

    async def write_grouped(
        self, actor: object, fn: Callable[..., Awaitable[Any]], arg: tuple[str, Any]
    ) -> Any:
        if fn.__name__ != "check_orders":
            raise AssertionError(f"the front end does not forward {fn.__name__}")
        gateway, check = arg
        fields = handoff.marshal_check(check)
        return await self._awaited(
            lambda rid: (Op.CHECK, rid, gateway, fields), handoff.unmarshal_order_check
        )

    def post(
        self,
        actor: object,
        deliver: Deliver[Any],
        urgent: bool,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
    ) -> None:
        if fn.__name__ != "flushed":
            raise AssertionError(f"the front end does not forward {fn.__name__}")
        self.link.request(lambda rid: (Op.FLUSH, rid), None, deliver)

    def post_grouped(
        self,
        actor: object,
        deliver: Deliver[Any],
        urgent: bool,
        fn: Callable[..., Awaitable[Any]],
        arg: tuple[str, int, Sequence[Any], float | None, str],
        weight: int,
    ) -> None:
        if fn.__name__ != "ingest_group":
            raise AssertionError(f"the front end does not forward {fn.__name__}")
        gateway, epoch, updates, _received, lane = arg
        rows = handoff.marshal_updates(updates)
        self.link.request(
            lambda rid: (Op.INGEST, rid, urgent, gateway, epoch, rows, lane, weight),
            handoff.unmarshal_batch,
            deliver,
        )

    async def _awaited(
        self, message: Callable[[int], tuple[Any, ...]], decode: Callable[[Any], object]
    ) -> Any:
        async with self._slots:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            def deliver(value: object, error: BaseException | None) -> None:
                if not fut.done():
                    if error is not None:
                        fut.set_exception(error)
                    else:
                        fut.set_result(value)

            self.link.request(message, decode, deliver)
            return await fut


class _Count:
    """A counter or gauge the servicer touches; changes are forwarded to the engine."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.value: float = 0
        self._changed = changed

    def inc(self, amount: float = 1) -> None:
        self.value += amount
        self._changed()

    def dec(self, amount: float = 1) -> None:
        self.value -= amount
        self._changed()


class ForwardedMetrics:
    """The metrics the front end's IngestServicer and auth interceptor touch; each
    change reaches the engine's :class:`~riskd.metrics.Metrics` as a small frame,
    so one scrape of the engine still shows everything (labels unchanged)."""

    def __init__(self, link: EngineLink) -> None:
        self._link = link
        self._scheduled = False
        self.streams_open = _Count(self._changed)
        self.paced = _Count(self._changed)
        self.throttled = _Count(self._changed)
        self.denied = _Count(self._changed)
        self.denied_unrecorded = _Count(self._changed)
        self._counts = (
            self.streams_open,
            self.paced,
            self.throttled,
            self.denied,
            self.denied_unrecorded,
        )

    def _changed(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._scheduled = False
        deltas = [c.value for c in self._counts]
        for c in self._counts:
            c.value = 0
        streams, paced, *counts = deltas
        self._link.send((Op.METRICS, int(streams), float(paced), *map(int, counts)))


async def _serve(sock: socket.socket, config: Config, address: str) -> int:
    loop = asyncio.get_running_loop()
    link = EngineLink()
    await loop.create_unix_connection(lambda: link, sock=sock)
    srv = config.server
    auth = Authenticator(config.access if srv.tls is not None else None)
    link.on_access = auth.reload
    # Duck-typed stand-ins: the servicer and interceptor use only what these forward.
    metrics = cast(Metrics, ForwardedMetrics(link))
    ingest = IngestServicer(
        cast(Portal, RemotePortal(link, UNARY_LIMIT)),
        cast(Sequencer, RemoteSequencer()),
        srv,
        metrics,
        auth,
    )
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(auth, None, metrics)],
        options=server_options(MAX_MESSAGE_BYTES, srv.transport_window_bytes),
    )
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    try:
        if srv.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, server_credentials(srv.tls))
        if port == 0:
            raise RuntimeError("the address is in use or not available")
    except (OSError, ValueError, RuntimeError) as e:
        link.send((Op.FAILED, f"cannot listen on server.frontend_listen {address}: {e}"))
        link.flush()
        await asyncio.sleep(0)  # let the write go out
        return 2
    await server.start()
    for name in HEALTH_NAMES:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    link.send((Op.STARTED, port))
    log.info("frontend_serving", port=port, pid=os.getpid())
    parent = os.getppid()

    async def orphaned() -> None:
        # Nothing signals a new parent: look (the socket's end usually comes first).
        while os.getppid() == parent:  # noqa: ASYNC110
            await asyncio.sleep(PARENT_CHECK_SECONDS)
        log.error("frontend_orphaned", parent=parent)
        link.end()

    watch = asyncio.create_task(orphaned())
    drain = asyncio.create_task(link.drain_asked.wait())
    ended = asyncio.create_task(link.ended.wait())
    await asyncio.wait((drain, ended), return_when=asyncio.FIRST_COMPLETED)
    watch.cancel()
    if link.ended.is_set():
        # No engine to make anything durable: fail fast; gateways resume elsewhere.
        log.warning("frontend_engine_gone")
        await server.stop(0.5)
        return 0
    for name in HEALTH_NAMES:
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await ingest.drain(DRAIN_SECONDS)
    link.send((Op.DRAINED,))
    link.flush()
    await server.stop(1.0)
    log.info("frontend_stopped")
    return 0


def _read_config(sock: socket.socket) -> tuple[Config, str, str]:
    """The first frame: the config, the address to bind and the log level."""
    reader = handoff.FrameReader()
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise EOFError("the engine closed the socket before sending the config")
        messages = reader.feed(data)
        if messages:
            (op, blob), *_ = messages
            if op != Op.CONFIG:
                raise ValueError(f"the first frame is {op}, not CONFIG")
            config, address, level = pickle.loads(blob)
            return config, address, level


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m riskd.api.frontend")
    p.add_argument("--fd", type=int, required=True, help="the socket to the engine process")
    args = p.parse_args(argv)
    # The engine drains this process (DRAIN); a terminal's ^C or a service
    # manager's SIGTERM to the whole group must not cut its streams first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    # The engine's end is trio's (non-blocking), and so was this one: started
    # ahead of its config (frontend_link.launch), the read below must wait.
    sock.setblocking(True)
    try:
        config, address, level = _read_config(sock)
    except EOFError:
        # The engine went away before it needed this process (a standby that
        # started it ahead was stopped): nothing was served, nothing to say.
        return 0
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        print(f"riskd frontend: {e}", file=sys.stderr)
        return 2
    logs.configure(level)
    # Its lines go where the engine's go: each names the process it came from
    # (the servicer's own lines, ingest_stream_opened say, are the same events).
    structlog.contextvars.bind_contextvars(process="frontend")
    started = time.monotonic()
    code = asyncio.run(_serve(sock, config, address))
    with contextlib.suppress(OSError):
        sock.close()
    log.debug("frontend_exit", code=code, seconds=round(time.monotonic() - started, 1))
    return code


if __name__ == "__main__":
    sys.exit(main())
