"""The engine's side of the ingest front-end process (:mod:`riskd.api.frontend`).

:class:`FrontendLink` spawns the process with one end of a Unix socket pair,
sends it the config, and waits for its bound port (or its one-line start-up
failure, raised as :class:`FrontendFailed`; the daemon turns it into its
exit-2 start-up error).  Then a trio task reads the front end's requests and
posts them to the sequencer as :class:`~riskd.api.bridge.Portal` posts the
in-process servicer's: consecutive ingest batches of one lane as one
``ingest_group`` (up to :data:`~riskd.api.bridge.MAX_GROUP_WEIGHT` updates),
consecutive unary checks as one ``check_orders``, session opens and a
stream's final ``flushed`` in order; each answer is written back once its
:class:`~riskd.actors.journal.Durable` is released, so an ack from the front
end is as durable as one from the engine's port.

Why trio and not the gRPC thread's asyncio loop: measured (cProfile of
``benchmarks.ingest``'s riskd-fe cell, 1 update per message), forwarding
through the gRPC loop spent most of the engine process's time on the two
thread hops per batch (each wake-up of the other thread a socket write, and
a wait for the GIL after it); read in the trio thread a batch crosses no
thread in the engine process.

Bounded: while more than ``limit`` requests are outstanding the socket is not
read (the front end's credit windows already bound them; this is the belt).
Writes are coalesced: whatever answers are ready when the writer runs go in
one write.

Failure: a front end that exits unexpectedly is logged (one error line with
its exit code), counted (``riskd_frontend_restarts_total``) and started
again after :data:`RESTART_SECONDS` on the port it had; batches it had
posted still become durable here, their answers are dropped, and gateways
reconnect and resume from their acked sequence.  At shutdown :meth:`drain`
asks it to drain (DRAIN), waits for DRAINED and its exit, and kills it after
the timeout.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from riskd import cpus
from riskd.access import Policy
from riskd.actors.journal import Durable
from riskd.actors.sequencer import Sequencer
from riskd.api import handoff
from riskd.api.bridge import MAX_GROUP_WEIGHT, post_in_trio
from riskd.api.handoff import Op
from riskd.config import Config
from riskd.errors import RiskdError
from riskd.metrics import Metrics

__all__ = ["FrontendLink", "FrontendFailed", "Launched", "RESTART_SECONDS", "launch"]

log = structlog.get_logger("riskd.frontend")

#: Wait before starting a front end again after it exited unexpectedly.
RESTART_SECONDS = 1.0
#: How long a front end may take to report its port.
START_SECONDS = 30.0
#: Bytes read from the socket at a time.
READ_BYTES = 1 << 18

Answer = Callable[[object, BaseException | None], None]


class FrontendFailed(RiskdError):
    """The front end could not start (it could not bind, say): one line."""

    STATUS = "FAILED_PRECONDITION"


class _Connection:
    """One front-end process's socket, as the engine's trio thread sees it."""

    def __init__(self, link: FrontendLink, stream: trio.SocketStream) -> None:
        self.link = link
        self.sequencer = link.sequencer
        self.stream = stream
        self._reader = handoff.FrameReader()
        self._out: list[tuple[Any, ...]] = []
        self._ready = trio.Event()  # something to write
        self._room = trio.Event()  # outstanding fell back under the limit
        self.outstanding = 0
        #: Streams the front end reported open: taken back from the gauge when it dies.
        self.streams_open = 0
        self.drained = trio.Event()
        self.lost = False
        # Consecutive ingest batches (of one lane) and unary checks, posted as one.
        self._group: list[tuple[int, tuple[Any, ...]]] = []
        self._group_urgent = False
        self._group_weight = 0
        self._checks: list[tuple[int, tuple[str, Any]]] = []

    # --- reading --------------------------------------------------------------

    async def receive(self) -> list[tuple[Any, ...]]:
        """The next messages ([] at the end of the stream, or bytes that are none)."""
        while True:
            data = await self.stream.receive_some(READ_BYTES)
            if not data:
                return []
            try:
                messages = self._reader.feed(data)
            except ValueError as e:  # not frames: treated as the front end's end
                log.error("frontend_protocol_error", error=str(e))
                return []
            if messages:
                return messages

    async def serve(self) -> None:
        """Read and post requests until the front end closes its socket."""
        limit = self.link.limit
        while True:
            if self.outstanding > limit:
                self._room = trio.Event()
                await self._room.wait()
            try:
                messages = await self.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not messages:
                return
            try:
                for m in messages:
                    self._dispatch(m)
            except Exception as e:  # a broken front end must not take the engine down
                log.error("frontend_protocol_error", error=repr(e))
                return  # it is stopped (its socket closed) and started again
            finally:
                self.posted()  # what was read before the bad message goes ahead

    def posted(self) -> None:
        """The end of what was read: post the group and the checks gathered."""
        self._post_group()
        self._post_checks()

    def _dispatch(self, m: tuple[Any, ...]) -> None:
        op = m[0]
        if op == Op.INGEST:
            _, rid, urgent, gateway, epoch, rows, lane, weight = m
            if self._group and (
                urgent != self._group_urgent or self._group_weight >= MAX_GROUP_WEIGHT
            ):
                self._post_group()
            self._post_checks()
            self._group_urgent = urgent
            self._group_weight += weight
            updates = handoff.unmarshal_updates(rows)
            self._group.append((rid, (gateway, epoch, updates, time.perf_counter(), lane)))
            return
        if op == Op.CHECK:
            self._post_group()
            self._checks.append((m[1], (m[2], handoff.unmarshal_check(m[3]))))
            return
        if op == Op.METRICS:  # not a post: the groups gathered go on gathering
            self._metrics(*m[1:])
            return
        if op == Op.DRAINED:
            self.drained.set()
            return
        self._post_group()
        self._post_checks()
        seq = self.sequencer
        if op == Op.FLUSH:
            self._post(seq.flushed, (), self._one(m[1], None), False)
        elif op == Op.OPEN:
            self._post(
                seq.open_session, (m[2], m[3]), self._one(m[1], handoff.marshal_resume), True
            )
        else:
            raise ValueError(f"unexpected message {op!r}")

    def _post_group(self) -> None:
        if not self._group:
            return
        group, self._group, self._group_weight = self._group, [], 0
        answers = [self._answerer(rid, handoff.marshal_batch) for rid, _ in group]
        self._post(
            self.sequencer.ingest_group,
            ([args for _, args in group],),
            self._many(answers),
            self._group_urgent,
        )

    def _post_checks(self) -> None:
        if not self._checks:
            return
        checks, self._checks = self._checks, []
        answers = [self._answerer(rid, handoff.marshal_order_check) for rid, _ in checks]
        self._post(
            self.sequencer.check_orders, ([c for _, c in checks],), self._many(answers), False, True
        )

    def _post(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        notify: Callable[[Any, BaseException | None], None],
        urgent: bool,
        patient: bool = False,
    ) -> None:
        """As the Portal posts: a full mailbox refuses a batch (UNAVAILABLE, its
        stream resumes) and is waited on by a unary write."""
        post_in_trio(self.link.nursery, self.sequencer, fn, args, notify, urgent, patient)

    def _answerer(self, rid: int, encode: Callable[[Any], object] | None) -> Answer:
        self.outstanding += 1
        return functools.partial(self._answer, rid, encode)

    def _one(
        self, rid: int, encode: Callable[[Any], object] | None
    ) -> Callable[[Durable[Any] | None, BaseException | None], None]:
        answer = self._answerer(rid, encode)

        def notify(done: Durable[Any] | None, error: BaseException | None) -> None:
            if done is None:
                answer(None, error)
            else:
                done.then(_succeeded(answer))

        return notify

    @staticmethod
    def _many(
        answers: list[Answer],
    ) -> Callable[[list[Durable[Any]] | None, BaseException | None], None]:
        def notify(done: list[Durable[Any]] | None, error: BaseException | None) -> None:
            if done is None:
                for answer in answers:
                    answer(None, error)
                return
            for d, answer in zip(done, answers, strict=True):
                d.then(_succeeded(answer))

        return notify

    def _answer(
        self,
        rid: int,
        encode: Callable[[Any], object] | None,
        value: object,
        error: BaseException | None,
    ) -> None:
        self.outstanding -= 1
        if error is not None:
            self.send((Op.ERROR, rid, handoff.marshal_error(error)))
        else:
            self.send((Op.RESULT, rid, None if encode is None else encode(value)))
        if self.outstanding <= self.link.limit // 2:
            self._room.set()

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

    def forget(self) -> None:
        """The front end is gone: so are its streams, and its answers are dropped."""
        self.lost = True
        self._out.clear()
        if self.streams_open:
            self.link.metrics.streams_open.dec(self.streams_open)
            self.streams_open = 0

    # --- writing ----------------------------------------------------------------

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue a message for the writer (what is queued meanwhile goes in one write)."""
        if self.lost:
            return  # its gateways resume from their acks elsewhere
        self._out.append(message)
        self._ready.set()

    async def write(self) -> None:
        """Write what is queued, as it is queued, until cancelled or the socket breaks."""
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            out, self._out = self._out, []
            if out:
                try:
                    await self.stream.send_all(handoff.pack(out))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return


def _succeeded(answer: Answer) -> Callable[[object], None]:
    return lambda value: answer(value, None)


@dataclasses.dataclass(frozen=True, slots=True)
class Launched:
    """A front-end process started ahead of its config (it waits on ``socket``)."""

    process: subprocess.Popen[bytes]
    socket: trio.socket.SocketType  # our end

    def kill(self) -> None:
        """Stop it if it runs (its config never came, or the engine is done with it)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.socket.close()


def launch() -> Launched:
    """Fork and exec a front end; FrontendFailed if that fails."""
    ours, theirs = trio.socket.socketpair()
    try:
        # One fork and exec per start, not per request; trio's open_process
        # would give the same Popen.
        process = subprocess.Popen(
            [sys.executable, "-m", "riskd.api.frontend", "--fd", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
        )
    except OSError as e:
        ours.close()
        raise FrontendFailed(f"cannot start the ingest front end: {e}") from e
    finally:
        theirs.close()
    return Launched(process, ours)


class FrontendLink:
    """Spawns, feeds and supervises the front-end process (in the trio thread)."""

    def __init__(
        self,
        config: Config,
        address: str,
        sequencer: Sequencer,
        metrics: Metrics,
        limit: int,
        log_level: str,
    ) -> None:
        self.config = config
        self.address = address
        self.sequencer = sequencer
        self.metrics = metrics
        self.limit = limit
        self.log_level = log_level
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._conn: _Connection | None = None
        self._stopping = False
        self._stopped = trio.Event()  # the supervisor returned
        self._nursery: trio.Nursery | None = None
        #: A process started ahead (:meth:`launch`), not yet handed its config.
        self._launched: Launched | None = None
        #: The CPUs each front-end process is pinned to (empty: not pinned).
        self.cpus: frozenset[int] = frozenset()

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None
        return self._nursery

    async def start(self, nursery: trio.Nursery) -> int:
        """Start the front end; its bound port.  FrontendFailed if it cannot serve."""
        self._nursery = nursery
        conn, port = await self._spawn()
        self.port = port
        host = self.address.rpartition(":")[0]
        self.address = f"{host}:{port}"  # a restart binds the same port again
        nursery.start_soon(self._supervise, conn)
        return port

    def launch(self, ahead: Launched | None = None) -> None:
        """Start the process ahead of :meth:`start` (or take ``ahead``, started
        earlier still): it imports gRPC and riskd (a few hundred ms) while the
        engine recovers, then waits for its config.  A node taking over its
        shard serves that much sooner."""
        if self._launched is None and self.process is None:
            self._launched = ahead or launch()
            self.process = self._launched.process

    async def _spawn(self) -> tuple[_Connection, int]:
        launched, self._launched = self._launched or launch(), None
        self.process = launched.process
        if self.cpus:  # still waiting for its config: the threads it starts inherit it
            try:
                cpus.pin(self.cpus, self.process.pid)
            except OSError as e:
                launched.kill()
                raise FrontendFailed(f"cannot pin the ingest front end: {e}") from e
        conn = _Connection(self, trio.SocketStream(launched.socket))
        self._conn = conn
        blob = pickle.dumps((self.config, self.address, self.log_level))
        try:
            await conn.stream.send_all(handoff.frame((Op.CONFIG, blob)))
            with trio.fail_after(START_SECONDS):
                messages = await conn.receive()
        except (trio.TooSlowError, trio.BrokenResourceError, OSError) as e:
            code = await self._reap(2.0)
            raise FrontendFailed(
                f"the ingest front end did not start (exit code {code}): {e or 'timed out'}"
            ) from e
        first = messages[0] if messages else (None,)
        if first[0] == Op.FAILED:
            await self._reap(2.0)
            raise FrontendFailed(first[1])
        if first[0] != Op.STARTED:
            code = await self._reap(2.0)
            raise FrontendFailed(f"the ingest front end did not start (exit code {code})")
        for m in messages[1:]:  # a gateway reconnecting to a restarted front end at once
            conn._dispatch(m)
        conn.posted()
        log.info(
            "frontend_started",
            port=first[1],
            pid=self.process.pid,
            **({"cpus": sorted(self.cpus)} if self.cpus else {}),
        )
        return conn, first[1]

    async def _reap(self, limit: float) -> int | None:
        """Wait up to ``limit`` seconds for the process to exit, then kill it; its code."""
        proc = self.process
        if proc is None:
            return None
        try:
            await trio.to_thread.run_sync(proc.wait, limit, abandon_on_cancel=True)
        except subprocess.TimeoutExpired:
            proc.kill()
            await trio.to_thread.run_sync(proc.wait)
        if self._conn is not None:
            await self._conn.stream.aclose()
        return proc.returncode

    async def _supervise(self, conn: _Connection) -> None:
        """Serve each front end while it runs; start it again if it exits while
        the engine serves."""
        try:
            while True:
                async with trio.open_nursery() as n:
                    n.start_soon(conn.write)
                    await conn.serve()
                    n.cancel_scope.cancel()
                conn.forget()
                code = await self._reap(2.0)
                if self.stopping():
                    return
                log.error("frontend_exited", exit_code=code, restart_in_s=RESTART_SECONDS)
                self.metrics.frontend_restarts.inc()
                while True:
                    await trio.sleep(RESTART_SECONDS)
                    if self.stopping():
                        return
                    try:
                        conn, _ = await self._spawn()
                        break
                    except FrontendFailed as e:
                        log.error("frontend_restart_failed", error=str(e))
                        self.metrics.frontend_restarts.inc()
        finally:
            self._stopped.set()

    def stopping(self) -> bool:
        """Whether the engine is stopping (its drain or kill): no restarts then."""
        return self._stopping

    def reload_access(self, policy: Policy) -> None:
        """Hand the front end the new ``[access]`` policy (after SIGHUP)."""
        self.config = dataclasses.replace(self.config, access=policy)
        if self._conn is not None:
            self._conn.send((Op.ACCESS, pickle.dumps(policy)))

    async def drain(self, limit: float) -> None:
        """Ask the front end to drain and wait for it (killed after ``limit``)."""
        self._stopping = True
        conn = self._conn
        if conn is not None and not conn.lost:
            conn.send((Op.DRAIN,))
            with trio.move_on_after(limit):
                await conn.drained.wait()
            if not conn.drained.is_set():
                log.warning("frontend_drain_timeout")
        code = await self._reap(2.0)
        if code not in (0, None):
            log.warning("frontend_exit_code", exit_code=code)
        with trio.move_on_after(2.0):
            await self._stopped.wait()

    def kill(self) -> None:
        """Stop the process now if it still runs (the engine is going away undrained)."""
        self._stopping = True
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self._launched is not None:  # started ahead, never handed its config
            self._launched.kill()
            self._launched = None
