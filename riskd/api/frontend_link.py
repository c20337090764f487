"""The engine's side of the ingest front-end process (:mod:`riskd.api.frontend`).

:class:`FrontendLink` spawns the process with one end of a Unix socket pair,
sends it the config, and waits for its bound port (or its one-line start-up
failure, raised as :class:`~riskd.daemon.StartupError` by the caller).  Then,
on the engine's gRPC loop (:class:`~riskd.api.bridge.GrpcThread`), it reads
the front end's requests and calls the real :class:`~riskd.api.bridge.Portal`
exactly as :class:`~riskd.api.ingest.IngestServicer` would in process,
writing each answer back once the portal delivers it (a write's only once
durable).  Bounded: while more than ``limit`` requests are outstanding the
socket is not read (the front end's credit windows already bound them; this
is the belt).

Failure: a front end that exits unexpectedly is logged (one error line with
its exit code), counted (``riskd_frontend_restarts_total``) and started
again after :data:`RESTART_SECONDS` on the port it had; batches it had
posted still become durable here, their answers are dropped, and gateways
reconnect and resume from their acked sequence.  At shutdown :meth:`drain`
asks it to drain (DRAIN), waits for DRAINED and its exit, and kills it
after the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import pickle
import socket
import subprocess
import sys
import time
from typing import Any, cast

import structlog

from riskd.access import Policy
from riskd.actors.sequencer import BatchResult, OrderCheck, SequenceError, Sequencer
from riskd.api import handoff
from riskd.api.bridge import Portal
from riskd.api.handoff import Op
from riskd.config import Config
from riskd.errors import RiskdError
from riskd.metrics import Metrics

__all__ = ["FrontendLink", "FrontendFailed", "RESTART_SECONDS"]

log = structlog.get_logger("riskd.frontend")

#: Wait before starting a front end again after it exited unexpectedly.
RESTART_SECONDS = 1.0
#: How long a front end may take to report its port.
START_SECONDS = 30.0


class FrontendFailed(RiskdError):
    """The front end could not start (it could not bind, say): one line."""

    STATUS = "FAILED_PRECONDITION"


class _Connection(asyncio.Protocol):
    """One front-end process's socket, as the engine sees it."""

    def __init__(self, link: FrontendLink) -> None:
        self.link = link
        self.portal = link.portal
        self.sequencer = link.sequencer
        self.transport: asyncio.Transport | None = None
        self._reader = handoff.FrameReader()
        self._out: list[tuple[Any, ...]] = []
        self._flush_scheduled = False
        self.outstanding = 0
        self._paused = False
        #: Streams the front end reported open: taken back from the gauge if it dies.
        self.streams_open = 0
        self.started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.drained = asyncio.Event()
        self.lost = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._reader.feed(data)
            for m in messages:
                self._dispatch(m)
        except Exception as e:  # a broken front end: it is stopped and restarted
            log.error("frontend_protocol_error", error=repr(e))
            if self.transport is not None:
                self.transport.close()
            return
        if self.outstanding > self.link.limit and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        if not self.started.done():
            self.started.set_exception(EOFError("the front end closed its socket"))
        if self.streams_open:  # its streams are gone with it
            self.link.metrics.streams_open.dec(self.streams_open)
            self.streams_open = 0

    # --- requests -------------------------------------------------------------

    def _dispatch(self, m: tuple[Any, ...]) -> None:
        op = m[0]
        seq = self.sequencer
        if op == Op.INGEST:
            _, rid, urgent, gateway, epoch, rows, lane, weight = m
            self.outstanding += 1
            self.portal.post_grouped(
                seq,
                functools.partial(self._batch_answered, rid),
                urgent,
                seq.ingest_group,
                (gateway, epoch, handoff.unmarshal_updates(rows), time.perf_counter(), lane),
                weight,
            )
        elif op == Op.FLUSH:
            self.outstanding += 1
            self.portal.post(seq, functools.partial(self._flushed, m[1]), False, seq.flushed)
        elif op == Op.OPEN:
            self._spawn(self._open(m[1], m[2], m[3]))
        elif op == Op.CHECK:
            self._spawn(self._check(m[1], m[2], handoff.unmarshal_check(m[3])))
        elif op == Op.METRICS:
            self._metrics(*m[1:])
        elif op == Op.STARTED:
            if not self.started.done():
                self.started.set_result(m[1])
        elif op == Op.FAILED:
            if not self.started.done():
                self.started.set_exception(FrontendFailed(m[1]))
        elif op == Op.DRAINED:
            self.drained.set()
        else:
            raise ValueError(f"unknown message {op!r}")

    def _spawn(self, coro: Any) -> None:
        self.outstanding += 1
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, rid: int, gateway: str, epoch: int) -> None:
        seq = self.sequencer
        try:
            resume = await self.portal.write(seq, seq.open_session, gateway, epoch)
        except Exception as e:  # the error is the answer
            self._answer(rid, None, e)
        else:
            self._answer(rid, handoff.marshal_resume(resume), None)

    async def _check(self, rid: int, gateway: str, check: Any) -> None:
        seq = self.sequencer
        try:
            done: OrderCheck = await self.portal.write_grouped(
                seq, seq.check_orders, (gateway, check)
            )
        except Exception as e:  # the error is the answer
            self._answer(rid, None, e)
        else:
            self._answer(rid, handoff.marshal_order_check(done), None)

    def _batch_answered(
        self, rid: int, value: BatchResult | SequenceError | None, error: BaseException | None
    ) -> None:
        self._answer(rid, None if value is None else handoff.marshal_batch(value), error)

    def _flushed(self, rid: int, _value: object, error: BaseException | None) -> None:
        self._answer(rid, None, error)

    def _answer(self, rid: int, value: object, error: BaseException | None) -> None:
        self.outstanding -= 1
        if error is not None:
            self.send((Op.ERROR, rid, handoff.marshal_error(error)))
        else:
            self.send((Op.RESULT, rid, value))
        if self._paused and self.outstanding <= self.link.limit // 2 and self.transport:
            self._paused = False
            self.transport.resume_reading()

    def _metrics(
        self, streams: int, paced: float, throttled: int, denied: int, unrecorded: int
    ) -> None:
        m = self.link.metrics
        if streams:
            m.streams_open.inc(streams)
            self.streams_open += streams
        if paced:
            m.paced.inc(paced)
        if throttled:
            m.throttled.inc(throttled)
        if denied:
            m.denied.inc(denied)
        if unrecorded:
            m.denied_unrecorded.inc(unrecorded)

    # --- writes ----------------------------------------------------------------

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue a message; those queued in one turn of the loop go in one write."""
        if self.transport is None or self.transport.is_closing():
            return  # the front end is gone: its gateways resume from their acks
        self._out.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(handoff.pack(out))


class FrontendLink:
    """Spawns, feeds and supervises the front-end process (on the gRPC loop)."""

    def __init__(
        self,
        config: Config,
        address: str,
        portal: Portal,
        sequencer: Sequencer,
        metrics: Metrics,
        limit: int,
        log_level: str,
    ) -> None:
        self.config = config
        self.address = address
        self.portal = portal
        self.sequencer = sequencer
        self.metrics = metrics
        self.limit = limit
        self.log_level = log_level
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._conn: _Connection | None = None
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Start the front end; its bound port.  FrontendFailed if it cannot serve."""
        port = await self._spawn()
        self.port = port
        host = self.address.rpartition(":")[0]
        self.address = f"{host}:{port}"  # a restart binds the same port again
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        return port

    async def _spawn(self) -> int:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # One fork and exec at start (and restart), not per request.
            self.process = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "riskd.api.frontend", "--fd", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
            )
        except OSError as e:
            ours.close()
            raise FrontendFailed(f"cannot start the ingest front end: {e}") from e
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        conn = _Connection(self)
        await loop.create_unix_connection(lambda: conn, sock=ours)
        self._conn = conn
        blob = pickle.dumps((self.config, self.address, self.log_level))
        conn.send((Op.CONFIG, blob))
        try:
            async with asyncio.timeout(START_SECONDS):
                port = await conn.started
        except FrontendFailed:
            await self._reap(2.0)
            raise
        except (TimeoutError, EOFError) as e:
            code = await self._reap(2.0)
            raise FrontendFailed(
                f"the ingest front end did not start (exit code {code}): {e or 'timed out'}"
            ) from e
        log.info("frontend_started", port=port, pid=self.process.pid)
        return port

    async def _reap(self, limit: float) -> int | None:
        """Wait up to ``limit`` seconds for the process to exit, then kill it; its code."""
        proc = self.process
        if proc is None:
            return None
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(proc.wait, limit)
            )
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.get_running_loop().run_in_executor(None, proc.wait)
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        return proc.returncode

    async def _supervise(self) -> None:
        """Start the front end again whenever it exits while the engine serves."""
        while True:
            conn = self._conn
            assert conn is not None
            await conn.lost.wait()
            code = await self._reap(2.0)
            if self.stopping():
                return
            log.error("frontend_exited", exit_code=code, restart_in_s=RESTART_SECONDS)
            self.metrics.frontend_restarts.inc()
            while True:
                await asyncio.sleep(RESTART_SECONDS)
                if self.stopping():
                    return
                try:
                    await self._spawn()
                    break
                except FrontendFailed as e:
                    log.error("frontend_restart_failed", error=str(e))
                    self.metrics.frontend_restarts.inc()

    def stopping(self) -> bool:
        """Whether the engine is stopping (its drain or kill): no restarts then."""
        return self._stopping

    def reload_access(self, policy: Policy) -> None:
        """Hand the front end the new ``[access]`` policy (after SIGHUP)."""
        self.config = dataclasses.replace(self.config, access=policy)
        if self._conn is not None:
            self._conn.send((Op.ACCESS, pickle.dumps(policy)))

    async def drain(self, limit: float) -> None:
        """Ask the front end to drain, wait for it (kill after ``limit``), stop supervising."""
        self._stopping = True
        conn = self._conn
        if conn is not None and not conn.lost.is_set():
            conn.send((Op.DRAIN,))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    await conn.drained.wait()
            if not conn.drained.is_set():
                log.warning("frontend_drain_timeout")
        code = await self._reap(2.0)
        if code not in (0, None):
            log.warning("frontend_exit_code", exit_code=code)
        if self._supervisor is not None:
            self._supervisor.cancel()

    def kill(self) -> None:
        """Stop the process now if it still runs (the engine is going away undrained)."""
        self._stopping = True
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
