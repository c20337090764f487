"""A gateway helper: batching, sequence numbers, resume after reconnect.

Usage (asyncio)::

    async with Gateway("127.0.0.1:50051", "gw-1") as gw:
        gw.deposit(account=7, asset="USDT", amount=1_000_000_000)
        gw.mark_price("BTC-USDT", 6_000_000)
        await gw.flush()            # returns when riskd has acknowledged all of it

Each ``Gateway`` is a new session: riskd assigns it a fresh epoch at its
first stream (``epoch`` absent or 0 in ``x-riskd-epoch``; the first response
names it, :attr:`Gateway.epoch`), so running the same code twice applies its
updates twice instead of having the second run's taken for resends of the
first's.  Reconnects within the session resume that epoch.  To resume an
epoch a previous process owned (it kept its unacknowledged updates and resends
them with their sequence numbers), pass ``epoch=``; if riskd has acknowledged
sequences this session has not numbered yet, the helper logs a warning and
keeps them in :attr:`Gateway.unsent_acked`: updates numbered up to there would
be taken for resends.  Every ack says how many updates riskd already had
(:attr:`Gateway.duplicates`); outside a resend the helper logs that too.

Updates are numbered 1, 2, 3… per gateway and epoch and sent in batches of up
to ``batch_size`` (riskd costs ~200 µs per stream message whatever its size:
batch).  At most ``window`` batches are unacknowledged; beyond that the
sender waits.  If the stream breaks, the helper reconnects with backoff: riskd's
first response names the last sequence it applied, and the helper resends
everything after it, so nothing acknowledged is lost and nothing is applied
twice.  Rejections (per update, with code and field) are collected in
:attr:`Gateway.rejections`, each once, including those of acks the broken
stream never delivered: riskd repeats them in the new stream's first response
(and for resent updates it had already decided).  Should riskd no longer hold
some of them (it keeps stream_window × max_batch_updates sequences; this
helper keeps its ``window`` at or below stream_window, so it does not happen
unless configured otherwise), the range is recorded in
:attr:`Gateway.unknown_rejections`.

Over mutual TLS pass ``credentials`` (:func:`tls_credentials`); riskd then
knows the gateway by its certificate, and ``gateway_id`` must be that name.
A gateway over its rate limit has its stream ended with RESOURCE_EXHAUSTED and
a ``google.rpc.RetryInfo``: the helper waits that long, reconnects and resends
(counted in :attr:`Gateway.throttled`).

In a cluster (docs/cluster.md) pass the other nodes as ``nodes`` (their
ingest addresses, ``--advertise-ingest``, where they run a front end): when the
node it talks to is down the helper tries the next, and a standby's
UNAVAILABLE naming the owner (``riskd-owner`` metadata) sends it straight to
the owner (counted in :attr:`Gateway.redirects`).  A paused node answers
nothing at all: with ``ack_timeout`` set, a stream that has heard nothing for
that long while updates wait for their ack is given up and the next node
tried.  The new owner restored the
session from the shared journal, so the resume is the same as after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from types import TracebackType

import grpc
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from riskd.v1 import ingest_pb2, ingest_pb2_grpc, types_pb2

__all__ = [
    "Gateway",
    "SessionMismatch",
    "StreamRefused",
    "owner_hint",
    "retry_delay",
    "tls_credentials",
]

#: Trailing metadata of a standby riskd node's UNAVAILABLE: the owner's address.
OWNER_METADATA = "riskd-owner"

log = logging.getLogger("riskd_client.gateway")

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
}


class StreamRefused(Exception):
    """riskd refused the stream for good (bad sequence, bad epoch, bad batch)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class SessionMismatch(Exception):
    """riskd's first response contradicts this session: nothing was sent on it."""

    def __init__(self, message: str, epoch: int, acked: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.acked = acked


def tls_credentials(ca: str, cert: str, key: str) -> grpc.ChannelCredentials:
    """Channel credentials for mutual TLS from PEM file paths."""
    with open(ca, "rb") as c, open(cert, "rb") as crt, open(key, "rb") as k:
        return grpc.ssl_channel_credentials(c.read(), k.read(), crt.read())


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The ``google.rpc.RetryInfo`` delay (seconds) in an error's status details, if any."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return float(info.retry_delay.ToNanoseconds() / 1e9)
    return None


class _Stalled(Exception):
    """The node stopped answering (``ack_timeout``): try the next one."""


def owner_hint(error: grpc.aio.AioRpcError) -> str | None:
    """The owner's address a standby riskd node named in its UNAVAILABLE, if any."""
    for key, value in error.trailing_metadata() or ():
        if key == OWNER_METADATA and isinstance(value, str) and value:
            return value
    return None


class Gateway:
    def __init__(
        self,
        target: str,
        gateway_id: str,
        *,
        epoch: int | None = None,
        batch_size: int = 256,
        window: int = 32,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        reconnect_delay: float = 0.05,
        max_reconnect_delay: float = 2.0,
        nodes: Sequence[str] = (),
        ack_timeout: float | None = None,
    ) -> None:
        self.target = target
        #: Every node of the cluster this gateway may be sent to, ``target`` first.
        self.nodes = [target, *(n for n in nodes if n != target)]
        #: Times a standby sent the helper to the shard's owner.
        self.redirects = 0
        self.ack_timeout = ack_timeout
        #: Streams given up because the node went silent (``ack_timeout``).
        self.stalls = 0
        self.gateway_id = gateway_id
        #: The epoch this session writes in: the one passed, or (None until the
        #: first stream) the fresh one riskd assigned.
        self.epoch = epoch
        self.batch_size = batch_size
        self.window = window
        self._channel = channel
        self._credentials = credentials
        self._own_channel = channel is None
        self._delay = reconnect_delay
        self._max_delay = max_reconnect_delay
        self.next_sequence = 1
        self.acked_sequence = 0
        self.rejections: list[ingest_pb2.Rejection] = []
        #: ``(first, last)`` sequence ranges acknowledged whose rejections were lost.
        self.unknown_rejections: list[tuple[int, int]] = []
        self.reconnects = 0
        self.throttled = 0
        #: Updates riskd acknowledged as ones it already had (resends), in all.
        self.duplicates = 0
        #: A resumed epoch's acknowledged sequence beyond what this session had
        #: numbered when it connected (0: none): updates numbered up to it are
        #: taken for resends.
        self.unsent_acked = 0
        self._resent = False  # a stream has resent batches an earlier one carried
        self._pending: list[ingest_pb2.Update] = []
        self._unacked: deque[ingest_pb2.IngestRequest] = deque()
        self._outbox: asyncio.Queue[ingest_pb2.IngestRequest | None] | None = None
        self._changed = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if t is None:
                await self.flush()
        finally:
            await self.close()

    async def start(self) -> None:
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials)
        self._task = asyncio.create_task(self._run())

    def _next_node(self) -> str:
        at = self.nodes.index(self.target) if self.target in self.nodes else -1
        return self.nodes[(at + 1) % len(self.nodes)]

    async def _watch(
        self,
        call: grpc.aio.StreamStreamCall[ingest_pb2.IngestRequest, ingest_pb2.IngestResponse],
        heard: list[float],
    ) -> None:
        """Cancel ``call`` when it stays silent for ack_timeout while it owes an answer."""
        assert self.ack_timeout is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ack_timeout / 4)
            owed = not self._connected.is_set() or self._outbox is None or bool(self._unacked)
            if owed and loop.time() - heard[0] > self.ack_timeout:
                heard[0] = -1.0  # tells _stream the cancel was ours
                call.cancel()
                return

    async def _connect(self, target: str) -> None:
        old, self.target = self._channel, target
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(target)
        else:
            self._channel = grpc.aio.secure_channel(target, self._credentials)
        if old is not None:
            await old.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._own_channel and self._channel is not None:
            await self._channel.close()

    # --- building updates ------------------------------------------------------

    def add(self, update: ingest_pb2.Update) -> int:
        """Queue one update (its ``sequence`` is assigned here); returns the sequence."""
        update.sequence = self.next_sequence
        self.next_sequence += 1
        self._pending.append(update)
        if len(self._pending) >= self.batch_size:
            self._seal()
        return update.sequence

    def fill(
        self,
        market: str,
        buyer: int,
        seller: int,
        price: int,
        quantity: int,
        *,
        trade_id: int = 0,
        buyer_fee: int = 0,
        seller_fee: int = 0,
        buyer_order_id: int = 0,
        seller_order_id: int = 0,
        ts: int = 0,
    ) -> int:
        return self.add(
            ingest_pb2.Update(
                timestamp_ms=ts,
                fill=ingest_pb2.Fill(
                    market=market,
                    trade_id=trade_id,
                    buyer_account=buyer,
                    seller_account=seller,
                    price=price,
                    quantity=quantity,
                    buyer_fee=buyer_fee,
                    seller_fee=seller_fee,
                    buyer_order_id=buyer_order_id,
                    seller_order_id=seller_order_id,
                ),
            )
        )

    def check_order(
        self,
        market: str,
        order_id: int,
        account: int,
        side: ingest_pb2.OrderSide.ValueType,
        price: int,
        quantity: int,
        *,
        reduce_only: bool = False,
        post_only: bool = False,
        leverage: int = 0,
        ts: int = 0,
    ) -> int:
        """A pre-trade check, batched: a refusal comes back in ``rejections``
        with ``order_refusal`` set; no rejection means accepted and reserved."""
        return self.add(
            ingest_pb2.Update(
                timestamp_ms=ts,
                check_order=ingest_pb2.CheckOrder(
                    market=market,
                    order_id=order_id,
                    account=account,
                    side=side,
                    price=price,
                    quantity=quantity,
                    reduce_only=reduce_only,
                    post_only=post_only,
                    leverage=leverage,
                ),
            )
        )

    def amend_order(
        self, market: str, order_id: int, price: int, quantity: int, *, ts: int = 0
    ) -> int:
        return self.add(
            ingest_pb2.Update(
                timestamp_ms=ts,
                amend_order=ingest_pb2.AmendOrder(
                    market=market, order_id=order_id, price=price, quantity=quantity
                ),
            )
        )

    def cancel_order(self, market: str, order_id: int, *, ts: int = 0) -> int:
        return self.add(
            ingest_pb2.Update(
                timestamp_ms=ts,
                cancel_order=ingest_pb2.CancelOrder(market=market, order_id=order_id),
            )
        )

    def mark_price(self, market: str, price: int, *, index_price: int = 0, ts: int = 0) -> int:
        """A mark; ``index_price`` (0: none) lets riskd's mark guard check its divergence."""
        return self.add(
            ingest_pb2.Update(
                timestamp_ms=ts,
                mark_price=ingest_pb2.MarkPrice(
                    market=market, price=price, index_price=index_price
                ),
            )
        )

    def deposit(
        self, account: int, asset: str, amount: int, *, deposit_id: int = 0, ts: int = 0
    ) -> int:
        return self.add(
            ingest_pb2.Update(
                timestamp_ms=ts,
                deposit=ingest_pb2.Deposit(
                    account=account, asset=asset, amount=amount, deposit_id=deposit_id
                ),
            )
        )

    def margin_transfer(self, account: int, market: str, amount: int, *, ts: int = 0) -> int:
        return self.add(
            ingest_pb2.Update(
                timestamp_ms=ts,
                margin_transfer=ingest_pb2.MarginTransfer(
                    account=account, market=market, amount=amount
                ),
            )
        )

    def margin_mode(self, market: str, account: int, cross: bool, *, ts: int = 0) -> int:
        """Switch ``account`` to cross (True) or isolated margin in ``market`` (only while flat)."""
        mode = types_pb2.MARGIN_MODE_CROSS if cross else types_pb2.MARGIN_MODE_ISOLATED
        return self.add(
            ingest_pb2.Update(
                timestamp_ms=ts,
                margin_mode=ingest_pb2.SetMarginMode(market=market, account=account, mode=mode),
            )
        )

    def funding_rate(self, market: str, rate_e8: int, *, ts: int = 0) -> int:
        return self.add(
            ingest_pb2.Update(
                timestamp_ms=ts, funding_rate=ingest_pb2.FundingRate(market=market, rate_e8=rate_e8)
            )
        )

    def liquidation_fill(
        self,
        market: str,
        liquidation_id: int,
        counterparty: int,
        price: int,
        quantity: int,
        *,
        counterparty_fee: int = 0,
        ts: int = 0,
    ) -> int:
        return self.add(
            ingest_pb2.Update(
                timestamp_ms=ts,
                liquidation_fill=ingest_pb2.LiquidationFill(
                    market=market,
                    liquidation_id=liquidation_id,
                    counterparty_account=counterparty,
                    price=price,
                    quantity=quantity,
                    counterparty_fee=counterparty_fee,
                ),
            )
        )

    def liquidation_done(self, market: str, liquidation_id: int, *, ts: int = 0) -> int:
        return self.add(
            ingest_pb2.Update(
                timestamp_ms=ts,
                liquidation_done=ingest_pb2.LiquidationDone(
                    market=market, liquidation_id=liquidation_id
                ),
            )
        )

    # --- sending ---------------------------------------------------------------

    async def flush(self, timeout: float | None = 30.0) -> int:  # noqa: ASYNC109
        """Send what is queued and wait until all of it is acknowledged."""
        self._seal()
        target = self.next_sequence - 1
        async with asyncio.timeout(timeout):
            while self.acked_sequence < target:
                self._raise_if_failed()
                await self._wait_change()
        self._raise_if_failed()
        return self.acked_sequence

    async def wait_connected(self) -> int:
        """Wait until riskd has said where it stands; returns its acknowledged sequence."""
        while not self._connected.is_set():
            self._raise_if_failed()
            await self._wait_change()
        return self.acked_sequence

    async def wait_for_window(self) -> None:
        """Wait until fewer than ``window`` batches are unacknowledged (backpressure)."""
        while len(self._unacked) >= self.window:
            self._raise_if_failed()
            await self._wait_change()

    def _seal(self) -> None:
        if not self._pending:
            return
        request = ingest_pb2.IngestRequest(epoch=self.epoch or 0, updates=self._pending)
        self._pending = []
        self._unacked.append(request)
        if self._outbox is not None:
            self._outbox.put_nowait(request)

    async def _wait_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _signal(self) -> None:
        self._changed.set()

    async def _run(self) -> None:
        delay = self._delay
        while True:
            try:
                await self._stream()
                return
            except _Stalled:
                self.stalls += 1
                if len(self.nodes) > 1 and self._own_channel:
                    await self._connect(self._next_node())
                continue
            except grpc.aio.AioRpcError as e:
                wait = retry_delay(e)
                if wait is not None:  # riskd said when: over a rate limit, say
                    self.throttled += 1
                    await asyncio.sleep(wait)
                    delay = self._delay
                    continue
                if e.code() not in RETRYABLE:
                    self._error = StreamRefused(e.code(), e.details() or "")
                    self._signal()
                    return
                if e.code() == grpc.StatusCode.UNAVAILABLE and self._own_channel:
                    owner = owner_hint(e)
                    if owner is not None and owner != self.target:
                        self.redirects += 1
                        await self._connect(owner)
                        delay = self._delay
                        continue
                    if len(self.nodes) > 1:  # this node is down: ask the next one
                        await self._connect(self._next_node())
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_delay)

    async def _stream(self) -> None:
        assert self._channel is not None
        stub = ingest_pb2_grpc.IngestServiceStub(self._channel)
        outbox: asyncio.Queue[ingest_pb2.IngestRequest | None] = asyncio.Queue()
        # No epoch yet: "0" asks riskd for a fresh one.
        metadata = (("x-riskd-gateway", self.gateway_id), ("x-riskd-epoch", str(self.epoch or 0)))
        call = stub.Ingest(_drain(outbox), metadata=metadata)
        first = True
        heard = [asyncio.get_running_loop().time()]
        watch = (
            asyncio.create_task(self._watch(call, heard)) if self.ack_timeout is not None else None
        )
        try:
            async for response in self._responses(call, heard):
                if first:
                    # riskd tells us where it stands; resend everything after it.
                    first = False
                    mismatch = self._session(response)
                    if mismatch is not None:
                        self._error = mismatch
                        self._signal()
                        call.cancel()
                        return
                    self._rejected(response.rejections)
                    start = response.rejections_from or response.acked_sequence + 1
                    if self.acked_sequence + 1 < min(start, response.acked_sequence + 1):
                        self.unknown_rejections.append((self.acked_sequence + 1, start - 1))
                    self._ack(response.acked_sequence)
                    # Batches an earlier stream carried go again: duplicates expected.
                    self._resent |= self._connected.is_set() and bool(self._unacked)
                    self._connected.set()
                    self._outbox = outbox
                    for request in self._unacked:
                        outbox.put_nowait(_trim(request, self.acked_sequence))
                    self._signal()
                    continue
                self._rejected(response.rejections)
                self._duplicates(response)
                self._ack(response.acked_sequence)
        finally:
            if watch is not None:
                watch.cancel()
            self._outbox = None
            outbox.put_nowait(None)

    async def _responses(
        self,
        call: grpc.aio.StreamStreamCall[ingest_pb2.IngestRequest, ingest_pb2.IngestResponse],
        heard: list[float],
    ) -> AsyncIterator[ingest_pb2.IngestResponse]:
        try:
            async for response in call:
                heard[0] = asyncio.get_running_loop().time()
                yield response
        except (asyncio.CancelledError, grpc.aio.AioRpcError) as e:
            if heard[0] == -1.0:
                raise _Stalled() from e
            raise

    def _session(self, first: ingest_pb2.IngestResponse) -> SessionMismatch | None:
        """Check riskd's first response against what this session numbered."""
        acked, numbered = first.acked_sequence, self.next_sequence - 1
        if self.epoch is None:  # riskd was asked for a fresh epoch
            if not first.epoch:
                return SessionMismatch(
                    "riskd assigned no epoch (a version before fresh epochs): pass epoch=",
                    0,
                    acked,
                )
            if acked:
                return SessionMismatch(
                    f"riskd assigned epoch {first.epoch} but reports sequence {acked} of it"
                    " acknowledged: this session sent nothing in it",
                    first.epoch,
                    acked,
                )
            self.epoch = first.epoch
            for request in self._unacked:
                request.epoch = first.epoch
            log.info("gateway %r: riskd assigned epoch %d", self.gateway_id, first.epoch)
            return None
        if first.epoch and first.epoch != self.epoch:
            return SessionMismatch(
                f"riskd answered for epoch {first.epoch}, not {self.epoch}", first.epoch, acked
            )
        if acked < self.acked_sequence:
            return SessionMismatch(
                f"riskd acknowledges only up to {acked} of epoch {self.epoch}, after"
                f" {self.acked_sequence}: it lost acknowledged updates",
                self.epoch,
                acked,
            )
        if acked > numbered and not self.unsent_acked:
            self.unsent_acked = acked
            log.warning(
                "gateway %r resumes epoch %d: riskd already acknowledged sequences up to %d,"
                " this session has numbered %d; updates it numbers up to %d will be taken"
                " for resends and not applied (a new session: leave epoch unset)",
                self.gateway_id,
                self.epoch,
                acked,
                numbered,
                acked,
            )
        return None

    def _duplicates(self, response: ingest_pb2.IngestResponse) -> None:
        if not response.duplicates:
            return
        self.duplicates += response.duplicates
        if not self._resent:
            log.warning(
                "gateway %r epoch %s: riskd already had %d of the updates acknowledged up"
                " to %d and did not apply them again",
                self.gateway_id,
                self.epoch,
                response.duplicates,
                response.acked_sequence,
            )

    def _rejected(self, rejections: Sequence[ingest_pb2.Rejection]) -> None:
        # Those at or below an ack already read were reported with that ack.
        self.rejections.extend(r for r in rejections if r.sequence > self.acked_sequence)

    def _ack(self, acked: int) -> None:
        if acked > self.acked_sequence:
            self.acked_sequence = acked
        while self._unacked and self._unacked[0].updates[-1].sequence <= self.acked_sequence:
            self._unacked.popleft()
        self._signal()


def _trim(request: ingest_pb2.IngestRequest, acked: int) -> ingest_pb2.IngestRequest:
    if request.updates[0].sequence > acked:
        return request
    keep: Sequence[ingest_pb2.Update] = [u for u in request.updates if u.sequence > acked]
    return ingest_pb2.IngestRequest(epoch=request.epoch, updates=keep)


async def _drain(outbox: asyncio.Queue[ingest_pb2.IngestRequest | None]):  # type: ignore[no-untyped-def]
    while (request := await outbox.get()) is not None:
        yield request
