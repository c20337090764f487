"""Overload stress: drive ``factor`` x riskd's measured capacity for a minute; report the push-back.

Not a timed test and not part of ``make bench``: a script that checks the
overload behaviour the design promises (bounded mailboxes and stream windows,
so beyond capacity a gateway is slowed by HTTP/2 flow control or refused with
``RESOURCE_EXHAUSTED`` and a retry delay; the mark-price path keeps its share;
memory stays bounded) and prints what it saw::

    .venv/bin/python -m benchmarks.stress [--seconds 60] [--gateways 4] [--factor 2.0]
                                          [--config FILE] [--json OUT]

Method
------
Three processes, so that the load generator's work does not show up as the
daemon's latency and the measurements are not delayed by the generator's
event loop (the development VM has 2 vCPUs: everything competes anyway, and
the report says how much CPU each process used):

* **riskd**: the real daemon (``python -m riskd.cli serve``, loopback, free
  ports, a fresh data directory, durable acknowledgements), with ``--config``
  passed through (e.g. to set ``gateway_updates_per_second``);
* **the driver** (this process): sets the state up, runs the mark feed,
  samples riskd once a second (``VmRSS`` from ``/proc/<pid>/status``, its
  Prometheus endpoint: mailbox depths and open streams; the kernel's TCP
  queues to its port from ``/proc/net/tcp``) and checks the end state;
* **the generator** (``python -m benchmarks.stress gen``, one process, one
  asyncio loop, one ``grpc.aio`` channel and TCP connection per gateway, as
  separate gateways would have): the fill streams.

Set-up (through :class:`riskd_client.gateway.Gateway`, not timed): each
gateway gets its own 200 accounts on BTC-USDT (1,000,000 USDT deposited,
100,000 of it as isolated margin, +/-1 BTC each: never near liquidation);
each market gets 20 long and 20 short "victims" at 12x-85x, whose liquidation
prices lie 0.6-8 % from the starting mark; both insurance funds are seeded.

1. **Capacity**, closed loop: every gateway stream keeps at most 32 batches of
   16 fills unacknowledged (``benchmarks.ingest.WINDOW``); after a 1 s warm-up
   acknowledged updates are counted for ``--capacity-seconds`` (5), then the
   streams drain.  (``--capacity N`` skips this and takes N updates/s.)
2. **Overload**, open loop, for ``--seconds``: each gateway is offered batches
   on a fixed schedule at ``factor x capacity / gateways`` and never waits for
   acknowledgements.  ``call.write`` returns once gRPC has taken the message;
   when riskd stops reading a stream (its window is full) and the HTTP/2
   windows are full too, the writer blocks: time **blocked**; slots that
   meanwhile fall more than 100 ms behind are **shed** (a gateway cannot queue
   without bound either).  When riskd ends a stream with
   ``RESOURCE_EXHAUSTED`` or ``UNAVAILABLE``, the generator counts a
   **refusal**, waits the ``google.rpc.RetryInfo`` delay from the status
   details (``grpc_status.rpc_status.aio.from_call``; 100 ms if there is
   none), reconnects and resumes after the sequence riskd's first response
   reports: what it had written after that is written again, in the next
   slots (**resent**).  If riskd ends the stream while a write is in flight,
   grpc.aio replaces riskd's status with ``INTERNAL: Internal error from
   Core``: counted as "status lost", reconnect after 10 ms.  At the end the
   fill streams are cancelled, not drained, so what was written and not
   acknowledged is what riskd's transport still held (**unacknowledged at
   the stop**).  Hence ``offered = accepted + shed + resent + unacknowledged
   at the stop``.
3. **Marks**, in the driver, during 2: one more gateway stream sends a batch
   per tick at ``--mark-hz`` (20/s) with a mark for every market, never shed;
   prices swing +/-4 % (up then down, or down then up in alternate markets)
   with +/-0.1 % jitter, so victims are liquidated throughout (and, once the
   backstop's inherited positions run out of margin, some are closed by ADL).
   Each tick's latency runs from its send (and from when it was due) to the
   acknowledgement that covers it.

Checks at the end: every mark acknowledged without rejections; riskd's mark
of every market (``QueryService/ListMarkets``) and its
``riskd_mark_price_timestamp_seconds`` equal the last ones sent; liquidations
settled per market (``riskd_liquidations_total``) equal those of the pure
engine (``riskd.core.Engine``) replaying the set-up and the mark path, exact
in the markets no gateway trades (in BTC-USDT the fills come in between, so
ADL may choose differently: shown, not checked); none still in progress;
``AdminService/CheckState`` finds no violation (no surviving liquidatable
position among them); riskd alive, no error logged, exit 0 on SIGTERM.
``--json OUT`` writes everything, with the per-second samples.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from benchmarks import harness
from benchmarks.harness import Server as _Server
from benchmarks.ingest import METHOD, WINDOW, _cpu_s

__all__ = ["main", "run_stress"]

ROOT = Path(__file__).resolve().parent.parent
FILL_MARKET = "BTC-USDT"
BATCH = 16  # fills per message
CYCLE = 64  # messages in a gateway's repeating fill pattern (its second half undoes the first)
ACCOUNTS_PER_GATEWAY = 200
FILL_ACCOUNT0 = 100_000  # gateway g's accounts: FILL_ACCOUNT0 + g * 10_000 + i
VICTIM_ACCOUNT0 = 10_000  # market m's victims: VICTIM_ACCOUNT0 + m * 1_000 + i
#: The other side of the long victims and of the short ones (two accounts: a
#: position that closes takes its isolated margin back to the wallet).
COUNTER_LONGS, COUNTER_SHORTS = 1, 2
VICTIMS_PER_SIDE = 20
VICTIM_MARGIN = (0.012, 0.08)  # margin / notional of the victims, evenly spaced
SWING = 0.04  # the mark path's amplitude
JITTER = 0.001
MAX_LAG_S = 0.1  # a fill batch whose slot is older than this is shed, not sent
DEFAULT_RETRY_S = 0.1  # wait after a refusal that carries no RetryInfo
REFUSALS = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
#: What grpc.aio reports when riskd ends a stream while a ``write`` is in flight:
#: the status riskd sent (and its RetryInfo) is lost, so reconnect soon and see.
LOST = "Internal error from Core"
LOST_RETRY_S = 0.01
MAX_FAILED_OPENS = 100  # in a row: riskd is gone, not busy
#: Starting marks (price units) and victim sizes (quantity units) of the default markets.
KNOWN = {
    "BTC-USDT": (5_000_000, 1_000),  # 50,000.00; 1 BTC
    "ETH-USDT": (300_000, 10_000),  # 3,000.00; 10 ETH
    "BTC-USD": (500_000, 500),  # 50,000.0; 500 contracts of 100 USD
}
FILL_MARK = KNOWN[FILL_MARKET][0]


def log(msg: str) -> None:
    print(f"[stress] {msg}", file=sys.stderr, flush=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _pct(xs: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of sorted ``xs`` (nearest rank); nan when empty."""
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# --- one gateway stream ------------------------------------------------------------


class StreamFailed(Exception):
    """riskd ended a stream with a status that is neither OK nor a refusal to retry."""


@dataclass
class _Counters:
    written_batches: int = 0
    written_updates: int = 0
    shed: dict[str, int] = field(
        default_factory=lambda: {"flow_control": 0, "refused": 0, "generator": 0}
    )
    blocked_s: float = 0.0
    refusals: dict[str, int] = field(default_factory=dict)
    retry_wait_s: float = 0.0
    retry_info: int = 0  # refusals that carried a RetryInfo
    resent_updates: int = 0
    rejections: int = 0
    rejection_examples: list[str] = field(default_factory=list)
    max_send_delay_s: float = 0.0


class Feed:
    """One gateway's ingest stream: pre-built bytes out, acks in, resume after a refusal.

    ``build(seq)`` returns the serialized batch that starts at ``seq`` and how
    many updates it holds: a pure function of the sequence, so a batch written
    again after a reconnect is the same batch.
    """

    def __init__(
        self, target: str, gateway: str, build: Callable[[int], tuple[bytes, int]]
    ) -> None:
        from riskd.v1 import ingest_pb2

        self.gateway = gateway
        self.build = build
        # Its own connection, as a real gateway has (grpc would share one per target).
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self._stub: Any = self.channel.stream_stream(
            METHOD,
            request_serializer=None,
            response_deserializer=ingest_pb2.IngestResponse.FromString,
        )
        self.call: Any = None
        self.reader: asyncio.Task[tuple[grpc.StatusCode, str, float | None]] | None = None
        self.acked = 0  # last sequence riskd acknowledged
        self.next_seq = 1  # first sequence of the next batch to write
        self.high = 0  # highest sequence ever written
        self.c = _Counters()
        #: (last sequence of a written batch, when it was due, when it was written)
        self._pending: collections.deque[tuple[int, float, float]] = collections.deque()
        self.latency_due: list[float] = []  # ack time - due time, per batch
        self.latency_send: list[float] = []  # ack time - first write, per batch
        self._first_write: dict[int, float] = {}
        self._changed = asyncio.Event()
        # open_loop's position: next slot, slots in all, why slots are shed, the write
        # in progress (started, next slot's due time)
        self.slot = self.slots = 0
        self._cause = "generator"
        self._writing: tuple[float, float] | None = None

    # -- connection --

    async def open(self) -> None:
        """Open a stream, waiting out refusals; continue after what riskd has applied."""
        metadata = (("x-riskd-gateway", self.gateway), ("x-riskd-epoch", "1"))
        for _ in range(MAX_FAILED_OPENS):
            call = self._stub(metadata=metadata)
            first: Any
            try:
                first = await call.read()
            except grpc.aio.AioRpcError:
                first = grpc.aio.EOF
            if first is not grpc.aio.EOF:
                break
            await self._refused(*await _status(call))
        else:
            raise StreamFailed(f"{self.gateway}: {MAX_FAILED_OPENS} connection attempts refused")
        self.call = call
        self._on_ack(first.acked_sequence)
        if self.next_seq > self.acked + 1:
            self.c.resent_updates += self.next_seq - self.acked - 1
        self.next_seq = self.acked + 1
        # Batches after the ack will be written again, with a new due time.
        while self._pending and self._pending[-1][0] > self.acked:
            self._pending.pop()
        self.reader = asyncio.create_task(self._read(call))

    async def _refused(self, code: grpc.StatusCode, details: str, retry: float | None) -> None:
        """Count a refusal and wait before reconnecting; raise on any other ending."""
        if code is grpc.StatusCode.INTERNAL and details == LOST:
            name, delay = "status lost (ended during a write)", LOST_RETRY_S
        elif code in REFUSALS:
            name, delay = code.name, DEFAULT_RETRY_S if retry is None else retry
        else:
            raise StreamFailed(f"{self.gateway}: {code.name}: {details}")
        self.c.refusals[name] = self.c.refusals.get(name, 0) + 1
        self.c.retry_info += retry is not None
        self.c.retry_wait_s += delay
        await asyncio.sleep(delay)

    async def recover(self) -> None:
        """The stream ended: after a refusal wait the retry delay and reopen; else raise."""
        assert self.reader is not None
        code, details, retry = await self.reader
        if code is grpc.StatusCode.OK:
            raise StreamFailed(f"{self.gateway}: riskd ended the stream (OK) while in use")
        await self._refused(code, details, retry)
        await self.open()

    async def _read(self, call: Any) -> tuple[grpc.StatusCode, str, float | None]:
        try:
            while (r := await call.read()) is not grpc.aio.EOF:
                if r.rejections:
                    self.c.rejections += len(r.rejections)
                    for x in r.rejections[: 3 - len(self.c.rejection_examples)]:
                        self.c.rejection_examples.append(f"{x.sequence} {x.field}: {x.message}")
                self._on_ack(r.acked_sequence)
        except grpc.aio.AioRpcError:
            pass
        except asyncio.CancelledError:
            return grpc.StatusCode.CANCELLED, "cancelled by the generator", None
        finally:
            self._changed.set()
        return await _status(call)

    def _on_ack(self, seq: int) -> None:
        if seq <= self.acked:
            return
        self.acked = seq
        now = time.perf_counter()
        pending = self._pending
        while pending and pending[0][0] <= seq:
            last, due, written = pending.popleft()
            self.latency_due.append(now - due)
            self.latency_send.append(now - self._first_write.pop(last, written))
        self._changed.set()

    async def wait_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def broken(self) -> bool:
        return self.reader is None or self.reader.done()

    async def write(self, due: float) -> bool:
        """Write the next batch; False if the stream had ended (nothing advanced)."""
        data, n = self.build(self.next_seq)
        last = self.next_seq + n - 1
        t = time.perf_counter()
        try:
            await self.call.write(data)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return False
        self._pending.append((last, due, t))
        self._first_write.setdefault(last, t)
        self.c.max_send_delay_s = max(self.c.max_send_delay_s, t - due)
        self.next_seq = last + 1
        self.high = max(self.high, last)
        self.c.written_batches += 1
        self.c.written_updates += n
        return True

    # -- load shapes --

    async def closed_loop(self, stop: asyncio.Event, window: int, batch: int) -> None:
        """Keep ``window`` batches unacknowledged until ``stop``; then wait for every ack."""
        while not stop.is_set():
            if self.broken():
                await self.recover()
            elif (self.next_seq - 1 - self.acked) >= window * batch:
                await self.wait_change()
            elif not await self.write(time.perf_counter()):
                await self.recover()
        while self.acked < self.high:  # a reconnect rewinds next_seq: write the rest again
            if self.broken():
                await self.recover()
            elif self.next_seq <= self.high:
                if not await self.write(time.perf_counter()):
                    await self.recover()
            else:
                await self.wait_change()

    async def resend(self) -> None:
        """Write again, unpaced, everything after riskd's ack up to what was written."""
        while self.next_seq <= self.high:
            if not await self.write(time.perf_counter()):
                await self.recover()

    async def open_loop(self, t0: float, rate: float, slots: int, max_lag: float | None) -> None:
        """Offer batch k at ``t0 + k / rate`` for k < ``slots``; never wait for an ack.

        ``max_lag`` None: never shed (the mark feed).  Otherwise a slot more
        than ``max_lag`` overdue is shed, attributed to flow control if the
        writer had been blocked in ``write`` past the slot, to a refusal if it
        was waiting to reconnect, else to the generator's own lag.
        """
        clock = time.perf_counter
        self.slot, self.slots, self._cause = 0, slots, "generator"
        while self.slot < slots:
            due = t0 + self.slot / rate
            now = clock()
            if now < due:
                await asyncio.sleep(due - now)
                continue
            if max_lag is not None and now - due > max_lag:
                upto = min(slots, math.ceil((now - max_lag - t0) * rate))
                self.c.shed[self._cause] += upto - self.slot
                self.slot = upto
                continue
            if self.broken():
                await self.recover()
                self._cause = "refused"
                continue
            t = clock()
            next_due = t0 + (self.slot + 1) / rate
            self._writing = (t, next_due)
            ok = await self.write(due)
            self._writing = None
            if not ok:
                await self.recover()
                self._cause = "refused"
                continue
            self.slot += 1
            blocked = clock() - max(t, next_due)
            if blocked > 0:
                self.c.blocked_s += blocked
                self._cause = "flow_control"
            else:
                self._cause = "generator"

    def end_drive(self, now: float) -> None:
        """The drive is over (its task is cancelled next): a write still blocked was
        blocked until now, and the slots not reached are shed."""
        if self._writing is not None:
            t, next_due = self._writing
            self.c.blocked_s += max(now - max(t, next_due), 0.0)
            self._cause = "flow_control"
        self.c.shed[self._cause] += self.slots - self.slot
        self.slot = self.slots

    def oldest_unacked_s(self, now: float) -> float:
        """How long ago the oldest batch not yet acknowledged was due (0: none)."""
        return now - self._pending[0][1] if self._pending else 0.0

    async def finish(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Half-close and wait for the last acks and an OK status; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.broken():
                        await self.recover()
                    await self.resend()
                    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                        await self.call.done_writing()
                    assert self.reader is not None
                    code, details, retry = await self.reader
                    if code is grpc.StatusCode.OK and self.acked >= self.high:
                        return True
                    if code is grpc.StatusCode.OK:
                        raise StreamFailed(f"{self.gateway}: stream ended before its last ack")
                    await self._refused(code, details, retry)
                    await self.open()
        except TimeoutError:
            return False

    async def cancel(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader

    async def close(self) -> None:
        await self.cancel()
        await self.channel.close()


async def _status(call: Any) -> tuple[grpc.StatusCode, str, float | None]:
    """A finished call's code, details and RetryInfo delay (None if it carried none)."""
    from google.rpc import error_details_pb2  # type: ignore[import-untyped]
    from grpc_status import rpc_status

    code = await call.code()
    details = await call.details() or ""
    retry: float | None = None
    if code is not grpc.StatusCode.OK:
        try:
            status = await rpc_status.aio.from_call(call)
        except ValueError:
            status = None
        for d in status.details if status is not None else ():
            if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                d.Unpack(info)
                retry = info.retry_delay.ToNanoseconds() / 1e9
    return code, details, retry


# --- workload ----------------------------------------------------------------------


def fill_accounts(gateway: int) -> range:
    start = FILL_ACCOUNT0 + gateway * 10_000
    return range(start, start + ACCOUNTS_PER_GATEWAY)


def fill_builder(gateway: int, batch: int, seed: int = 11) -> Callable[[int], tuple[bytes, int]]:
    """Gateway ``gateway``'s fills, a pure function of the sequence.

    A cycle of CYCLE messages between its own accounts, 0.001-0.010 BTC near
    50,000; the second half of the cycle is the first half backwards with
    buyer and seller swapped, so positions return to where they were and the
    pattern can repeat for as long as the run lasts.
    """
    from riskd.v1 import ingest_pb2

    rng = random.Random(seed * 1000 + gateway)
    accounts = list(fill_accounts(gateway))
    half: list[list[tuple[int, int, int, int]]] = []
    for _ in range(CYCLE // 2):
        msg = []
        for _ in range(batch):
            a, b = rng.sample(accounts, 2)
            msg.append((a, b, FILL_MARK + rng.randrange(-10, 11) * 10, rng.randrange(1, 11)))
        half.append(msg)
    back = [[(b, a, p, q) for a, b, p, q in reversed(msg)] for msg in reversed(half)]
    trade0 = (gateway + 1) * 10**12  # trade ids are unique per market
    templates = []
    for msg in half + back:
        updates = [
            ingest_pb2.Update(
                fill=ingest_pb2.Fill(
                    market=FILL_MARKET, buyer_account=a, seller_account=b, price=p, quantity=q
                )
            )
            for a, b, p, q in msg
        ]
        templates.append(ingest_pb2.IngestRequest(epoch=1, updates=updates))

    def build(seq: int) -> tuple[bytes, int]:
        m, offset = divmod(seq - 1, batch)
        request = templates[m % CYCLE]
        if offset:  # resuming inside a batch: only its tail
            request = ingest_pb2.IngestRequest(epoch=1, updates=request.updates[offset:])
        ts = _now_ms()
        for i, u in enumerate(request.updates):
            u.sequence = seq + i
            u.timestamp_ms = ts
            u.fill.trade_id = trade0 + seq + i
        return request.SerializeToString(), len(request.updates)

    return build


@dataclass(frozen=True)
class Victim:
    market: str
    account: int
    size: int  # signed
    margin: int


def plan_victims(config: Any) -> tuple[dict[str, int], list[Victim]]:
    """Starting marks, and per market 20 longs and 20 shorts at 12x-85x."""
    marks: dict[str, int] = {}
    victims: list[Victim] = []
    lo, hi = VICTIM_MARGIN
    for m, spec in enumerate(config.markets):
        p0, qty = KNOWN.get(spec.symbol, (1000 * 10**spec.price_decimals, 1000 * spec.step_size))
        p0 -= p0 % spec.tick_size
        marks[spec.symbol] = p0
        value = abs(spec.trade_value(qty, p0))
        for i in range(2 * VICTIMS_PER_SIDE):
            frac = lo + (hi - lo) * (i // 2) / max(VICTIMS_PER_SIDE - 1, 1)
            size = qty if i % 2 == 0 else -qty
            margin = max(math.ceil(value * frac), 1)
            victims.append(Victim(spec.symbol, VICTIM_ACCOUNT0 + m * 1000 + i, size, margin))
    return marks, victims


def setup_inputs(config: Any, gateways: int, ts: int) -> tuple[list[Any], list[Any]]:
    """The set-up as riskd.core inputs: (gateway updates, fund injections after them)."""
    from riskd.core.events import Deposit, Fill, FundInjection, MarginTransfer, MarkPrice

    marks, victims = plan_victims(config)
    out: list[Any] = []
    for asset, a in config.assets.items():
        for cp in (COUNTER_LONGS, COUNTER_SHORTS):
            out.append(Deposit(cp, asset, 10**7 * a.scale, ts))
    for spec in config.markets:
        for cp in (COUNTER_LONGS, COUNTER_SHORTS):
            out.append(MarginTransfer(cp, spec.symbol, 10**6 * spec.asset.scale, ts))
        out.append(MarkPrice(spec.symbol, marks[spec.symbol], ts))
    for g in range(gateways):
        accounts = list(fill_accounts(g))
        for a in accounts:
            out.append(Deposit(a, "USDT", 10**12, ts))
            out.append(MarginTransfer(a, FILL_MARKET, 10**11, ts))
        for buyer, seller in zip(accounts[0::2], accounts[1::2], strict=True):
            out.append(Fill(FILL_MARKET, 0, buyer, seller, FILL_MARK, 1000, ts=ts))
    specs = {s.symbol: s for s in config.markets}
    for v in victims:
        out.append(Deposit(v.account, specs[v.market].asset.symbol, v.margin, ts))
        out.append(MarginTransfer(v.account, v.market, v.margin, ts))
        p, q = marks[v.market], abs(v.size)
        if v.size > 0:
            out.append(Fill(v.market, 0, v.account, COUNTER_LONGS, p, q, ts=ts))
        else:
            out.append(Fill(v.market, 0, COUNTER_SHORTS, v.account, p, q, ts=ts))
    funds = [FundInjection(asset, 10**6 * a.scale, "stress") for asset, a in config.assets.items()]
    return out, funds


def mark_path(
    config: Any, start: dict[str, int], ticks: int, seed: int = 5
) -> dict[str, list[int]]:
    """Per market, ``ticks`` marks: a +/-SWING sine over the run plus jitter, on the tick grid."""
    rng = random.Random(seed)
    out: dict[str, list[int]] = {}
    for m, spec in enumerate(config.markets):
        p0, sign = start[spec.symbol], (1 if m % 2 == 0 else -1)
        path = []
        for k in range(ticks):
            x = sign * SWING * math.sin(2 * math.pi * (k + 1) / ticks)
            p = round(p0 * (1 + x + rng.uniform(-JITTER, JITTER)))
            path.append(max(p - p % spec.tick_size, spec.tick_size))
        out[spec.symbol] = path
    return out


def replay_liquidations(
    config: Any, inputs: list[Any], funds: list[Any], path: dict[str, list[int]], ts: list[int]
) -> dict[str, int]:
    """Liquidations settled per market by the pure engine for the set-up and the mark path.

    Exact for the markets no gateway trades on (the daemon applies what
    ``riskd.core.Engine`` applies for the same inputs in the same order); in
    the fill market the gateways' fills come in between, and ADL may pick
    differently.
    """
    from riskd.core import Engine
    from riskd.core.events import LiquidationSettled, MarkPrice

    engine = Engine(config.markets, config.funds)
    for x in (*inputs, *funds):
        engine.apply(x)
    out = dict.fromkeys(path, 0)
    for k, t in enumerate(ts):
        for market, prices in path.items():
            for e in engine.apply(MarkPrice(market, prices[k], t)) or ():
                if isinstance(e, LiquidationSettled):
                    out[e.market] += 1
    return out


def mark_builder(
    markets: list[str], path: dict[str, list[int]], ts0_ms: int, hz: float
) -> Callable[[int], tuple[bytes, int]]:
    """Tick k is one batch with every market's mark, stamped ts0 + k / hz."""
    from riskd.v1 import ingest_pb2

    n = len(markets)

    def build(seq: int) -> tuple[bytes, int]:
        k, offset = divmod(seq - 1, n)
        ts = _mark_ts(ts0_ms, hz, k)
        updates = [
            ingest_pb2.Update(
                sequence=seq + i - offset,
                timestamp_ms=ts,
                mark_price=ingest_pb2.MarkPrice(market=market, price=path[market][k]),
            )
            for i, market in enumerate(markets)
            if i >= offset
        ]
        return ingest_pb2.IngestRequest(epoch=1, updates=updates).SerializeToString(), len(updates)

    return build


async def set_up(target: str, inputs: list[Any], funds: list[Any]) -> None:
    """Send the set-up through the client helper; seed the funds through AdminService."""
    from riskd.core.events import Deposit, Fill, MarginTransfer, MarkPrice
    from riskd.v1 import admin_pb2, admin_pb2_grpc
    from riskd_client.gateway import Gateway

    async with Gateway(target, "stress-setup", batch_size=256) as gw:
        for x in inputs:
            if isinstance(x, Deposit):
                gw.deposit(x.account, x.asset, x.amount, ts=x.ts)
            elif isinstance(x, MarginTransfer):
                gw.margin_transfer(x.account, x.market, x.amount, ts=x.ts)
            elif isinstance(x, MarkPrice):
                gw.mark_price(x.market, x.price, ts=x.ts)
            elif isinstance(x, Fill):
                gw.fill(x.market, x.buyer, x.seller, x.price, x.quantity, ts=x.ts)
            else:
                raise TypeError(x)
        await gw.flush(timeout=120)
        if gw.rejections:
            raise RuntimeError(f"set-up rejected: {gw.rejections[:3]}")
    async with grpc.aio.insecure_channel(target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for f in funds:
            await admin.InjectFund(
                admin_pb2.InjectFundRequest(asset=f.asset, amount=f.amount, cause=f.cause)
            )


# --- the generator process -----------------------------------------------------------


def _emit(rec: dict[str, Any]) -> None:
    print(json.dumps(rec), flush=True)


async def _capacity(feeds: list[Feed], ns: argparse.Namespace) -> float:
    """Closed loop on every stream: acknowledged updates/s after a warm-up (emitted too)."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(f.closed_loop(stop, WINDOW, ns.batch)) for f in feeds]
    await asyncio.sleep(ns.warmup)
    a0, t0, c0 = sum(f.acked for f in feeds), time.perf_counter(), time.process_time()
    await asyncio.sleep(ns.capacity_seconds)
    a1, t1, c1 = sum(f.acked for f in feeds), time.perf_counter(), time.process_time()
    stop.set()
    await asyncio.gather(*tasks)
    capacity = (a1 - a0) / (t1 - t0)
    _emit(
        {
            "event": "capacity",
            "measured": True,
            "updates_per_s": capacity,
            "seconds": t1 - t0,
            "generator_cores": (c1 - c0) / (t1 - t0),
            "rejections": sum(f.c.rejections for f in feeds),
            "refusals": _merge(f.c.refusals for f in feeds),
        }
    )
    return capacity


async def _generate(ns: argparse.Namespace) -> None:
    """Capacity closed loop, then the open-loop overload; JSON lines on stdout."""
    feeds = [
        Feed(ns.target, f"stress-gw{g}", fill_builder(g, ns.batch)) for g in range(ns.gateways)
    ]
    try:
        await asyncio.gather(*(f.open() for f in feeds))
        if ns.capacity:
            capacity = ns.capacity
            _emit({"event": "capacity", "updates_per_s": capacity, "measured": False})
        else:
            capacity = await _capacity(feeds, ns)
        for f in feeds:  # the overload is measured on its own
            f.c = _Counters()
            f.latency_due.clear()
            f.latency_send.clear()

        # 2. overload, open loop
        rate = ns.factor * capacity / ns.batch / ns.gateways  # messages/s per stream
        slots = int(rate * ns.seconds)
        start_acked = [f.acked for f in feeds]
        start_high = [f.high for f in feeds]
        t0 = time.perf_counter() + 0.2
        _emit({"event": "driving", "wall": time.time() + 0.2, "rate_msgs_per_s": rate})
        c0 = time.process_time()
        stop = asyncio.Event()
        series: list[dict[str, float]] = []

        async def sample() -> None:
            while not stop.is_set():
                await asyncio.sleep(1.0)
                series.append(
                    {
                        "t": round(time.perf_counter() - t0, 2),
                        "accepted": sum(
                            f.acked - a for f, a in zip(feeds, start_acked, strict=True)
                        ),
                        "unacked_batches": sum(
                            math.ceil((f.high - f.acked) / ns.batch) for f in feeds
                        ),
                        "blocked_s": sum(f.c.blocked_s for f in feeds),
                    }
                )

        sampler = asyncio.create_task(sample())
        drive = [asyncio.create_task(f.open_loop(t0, rate, slots, MAX_LAG_S)) for f in feeds]
        await asyncio.wait(drive, timeout=t0 + ns.seconds - time.perf_counter())
        t1 = time.perf_counter()
        stop.set()
        for f, task in zip(feeds, drive, strict=True):
            if not task.done():  # blocked in write() (or about to write the last slot)
                f.end_drive(t1)
                task.cancel()
        results = await asyncio.gather(*drive, return_exceptions=True)
        oldest = max(f.oldest_unacked_s(t1) for f in feeds)
        failures = [repr(r) for r in results if isinstance(r, BaseException) and not _cancelled(r)]
        accepted = [f.acked - a for f, a in zip(feeds, start_acked, strict=True)]
        unacked = [f.high - f.acked for f in feeds]
        new_written = [f.high - h for f, h in zip(feeds, start_high, strict=True)]
        c1 = time.process_time()
        await sampler
        threads = len(os.listdir(f"/proc/{os.getpid()}/task"))
        for f in feeds:
            await f.cancel()
        lat = sorted(x for f in feeds for x in f.latency_due)
        _emit(
            {
                "event": "result",
                "gateways": ns.gateways,
                "batch": ns.batch,
                "rate_msgs_per_s_per_gateway": rate,
                "slots_per_gateway": slots,
                "seconds": ns.seconds,
                "elapsed_s": t1 - t0,
                "offered_updates": slots * ns.batch * ns.gateways,
                "accepted_updates": sum(accepted),
                "written_updates": sum(f.c.written_updates for f in feeds),
                "new_written_updates": sum(new_written),
                "unacked_updates_at_stop": sum(unacked),
                "oldest_unacked_at_stop_s": oldest,
                "shed_updates": {
                    k: sum(f.c.shed[k] for f in feeds) * ns.batch for k in feeds[0].c.shed
                },
                "blocked_s_per_gateway": sum(f.c.blocked_s for f in feeds) / ns.gateways,
                "refusals": _merge(f.c.refusals for f in feeds),
                "refusals_with_retry_info": sum(f.c.retry_info for f in feeds),
                "retry_wait_s": sum(f.c.retry_wait_s for f in feeds),
                "resent_updates": sum(f.c.resent_updates for f in feeds),
                "rejections": sum(f.c.rejections for f in feeds),
                "rejection_examples": [x for f in feeds for x in f.c.rejection_examples][:3],
                "fill_ack_latency_ms": {
                    "batches": len(lat),
                    "p50": 1000 * _pct(lat, 0.5),
                    "p99": 1000 * _pct(lat, 0.99),
                    "max": 1000 * (lat[-1] if lat else float("nan")),
                },
                "per_gateway": [
                    {
                        "gateway": f.gateway,
                        "accepted_updates": a,
                        "unacked_updates_at_stop": u,
                        "blocked_s": round(f.c.blocked_s, 2),
                        "shed_batches": f.c.shed,
                        "refusals": f.c.refusals,
                    }
                    for f, a, u in zip(feeds, accepted, unacked, strict=True)
                ],
                "series": series,
                "generator_cores": (c1 - c0) / (t1 - t0),
                "generator_threads": threads,
                "failures": failures,
            }
        )
    finally:
        for f in feeds:
            await f.close()


def _cancelled(e: BaseException) -> bool:
    return isinstance(e, asyncio.CancelledError)


def _merge(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


# --- the driver: daemon, sampler, mark feed, checks -----------------------------------


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """Every sample on riskd's metrics endpoint: (name, labels, value)."""
    return [(x.name, x.labels, x.value) for x in harness.scrape(port)]


def _rss_kb(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _socket_queues(port: int) -> tuple[int, int]:
    """Bytes in the kernel's TCP queues of connections to ``port`` on 127.0.0.1.

    (received by riskd's sockets and not read yet, written by clients and not
    yet taken by riskd's side), from /proc/net/tcp.
    """
    unread = unsent = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            if local == port:
                unread += rx
            elif remote == port:
                unsent += tx
    return unread, unsent


class Sampler(threading.Thread):
    """Once a second: riskd's RSS, CPU, mailbox depths, open streams and socket queues."""

    def __init__(self, daemon: _Server, interval: float = 1.0) -> None:
        super().__init__(name="stress-sampler", daemon=True)
        assert daemon.metrics_port is not None
        self.pid, self.port, self.grpc_port = daemon.pid, daemon.metrics_port, daemon.port
        self.interval = interval
        self.generator_pid = 0  # set once the generator runs
        self.samples: list[dict[str, Any]] = []
        self.phase = "setup"
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop_event.is_set():
            s: dict[str, Any] = {"t": round(time.perf_counter() - t0, 2), "phase": self.phase}
            try:
                s["rss_mb"] = _rss_kb(self.pid) / 1024
                s["cpu_s"] = _cpu_s(self.pid)
                unread, unsent = _socket_queues(self.grpc_port)
                s["socket_unread_kb"], s["socket_unsent_kb"] = unread / 1024, unsent / 1024
                if self.generator_pid:
                    with contextlib.suppress(OSError):
                        s["generator_rss_mb"] = _rss_kb(self.generator_pid) / 1024
                boxes = {}
                for name, labels, value in scrape(self.port):
                    if name == "riskd_actor_mailbox_messages":
                        key = "/".join(x for x in (labels["kind"], labels["market"]) if x)
                        if labels["asset"] and labels["kind"] in ("fund", "wallet"):
                            key += "/" + labels["asset"]
                        boxes[key] = value
                    elif name == "riskd_ingest_streams_open":
                        s["streams_open"] = value
                s["mailboxes"] = boxes
            except (OSError, ValueError) as e:
                self.errors.append(f"{s['t']}s: {e!r}")
            self.samples.append(s)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def _start_daemon(tmp: Path, config: str | None, riskd_root: Path | None) -> _Server:
    extra = ["--config", str(Path(config).resolve())] if config else []
    cmd = harness.riskd_command(tmp / "data", *extra)
    return harness.start(cmd, tmp / "riskd.log", riskd_root=riskd_root)


async def _final_state(target: str) -> dict[str, Any]:
    from riskd.v1 import admin_pb2, admin_pb2_grpc, query_pb2, query_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        markets = await query_pb2_grpc.QueryServiceStub(channel).ListMarkets(
            query_pb2.ListMarketsRequest(), timeout=30
        )
        check = await admin_pb2_grpc.AdminServiceStub(channel).CheckState(
            admin_pb2.CheckStateRequest(), timeout=60
        )
    return {
        "marks": {m.symbol: m.mark_price for m in markets.markets},
        "violations": list(check.violations),
        "digest": check.digest,
    }


async def _drive(ns: argparse.Namespace, daemon: _Server, sampler: Sampler) -> dict[str, Any]:
    """Set up, start the generator, run the mark feed beside its overload, check the end state."""
    from riskd.config import load

    config = load(ns.config)
    target = f"127.0.0.1:{daemon.port}"
    assert daemon.metrics_port is not None
    t = time.perf_counter()
    inputs, funds = setup_inputs(config, ns.gateways, _now_ms())
    await set_up(target, inputs, funds)
    log(f"set-up: {len(inputs)} updates ({time.perf_counter() - t:.1f}s)")
    r: dict[str, Any] = {"rss_mb": {"after_setup": _rss_kb(daemon.pid) / 1024}}
    markets = [s.symbol for s in config.markets]
    ticks = max(int(ns.seconds * ns.mark_hz), 1)
    path = mark_path(config, plan_victims(config)[0], ticks)
    metrics0 = scrape(daemon.metrics_port)

    cmd = [
        sys.executable, "-m", "benchmarks.stress", "gen", "--target", target,
        "--gateways", str(ns.gateways), "--batch", str(ns.batch), "--factor", str(ns.factor),
        "--seconds", str(ns.seconds), "--capacity-seconds", str(ns.capacity_seconds),
        "--warmup", str(ns.warmup), "--capacity", str(ns.capacity),
    ]  # fmt: skip
    sampler.phase = "capacity"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    gen = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, env=env
    )
    assert gen.stdout is not None
    sampler.generator_pid = gen.pid
    marks_task: asyncio.Task[tuple[Feed, bool]] | None = None
    ts0 = 0
    cpu0 = cpu1 = (0.0, 0.0, 0.0, 0.0)
    try:
        async with asyncio.timeout(ns.seconds + ns.capacity_seconds + ns.warmup + 120):
            while line := await gen.stdout.readline():
                rec = json.loads(line)
                if rec["event"] == "capacity":
                    r["capacity"] = rec
                    log(f"capacity (closed loop): {rec['updates_per_s']:,.0f} updates/s")
                elif rec["event"] == "driving":
                    sampler.phase = "overload"
                    r["rss_mb"]["overload_start"] = _rss_kb(daemon.pid) / 1024
                    cpu0 = _cpus(daemon.pid, gen.pid)
                    t0 = time.perf_counter() + (rec["wall"] - time.time())
                    ts0 = int(rec["wall"] * 1000)
                    log(f"overload: {ns.factor:g} x capacity for {ns.seconds:g}s + marks")
                    feed = _mark_feed(target, markets, path, ns.mark_hz, t0, ts0)
                    marks_task = asyncio.create_task(feed)
                elif rec["event"] == "result":
                    cpu1 = _cpus(daemon.pid, gen.pid)
                    r["overload"] = rec
        await gen.wait()
    finally:
        if gen.returncode is None:
            gen.kill()
            await gen.wait()
    if "overload" not in r or marks_task is None or gen.returncode != 0:
        raise RuntimeError(f"generator failed (exit {gen.returncode})")
    marks, drained = await marks_task
    sampler.phase = "after"
    await asyncio.sleep(1.0)
    final = await _final_state(target)
    metrics1 = scrape(daemon.metrics_port)
    await marks.close()
    await asyncio.sleep(1.0)  # one more RSS sample after everything stopped

    dt = max(cpu1[0] - cpu0[0], 1e-9)
    r["cores_during_overload"] = {
        name: (cpu1[i] - cpu0[i]) / dt
        for i, name in enumerate(("", "riskd", "generator", "driver"))
        if name
    }
    r["marks"] = _mark_report(ns, marks, drained, path, ts0, final, metrics1)
    stamps = [_mark_ts(ts0, ns.mark_hz, k) for k in range(ticks)]
    expected = replay_liquidations(config, inputs, funds, path, stamps)
    r["liquidations"] = {
        m: {
            "settled": _metric(metrics1, "riskd_liquidations_total", market=m)
            - _metric(metrics0, "riskd_liquidations_total", market=m),
            "engine_replay": expected[m],
            "replay_exact": m != FILL_MARKET,
            "in_progress_at_end": _metric(metrics1, "riskd_liquidations_in_progress", market=m),
            "adl_events": _metric(metrics1, "riskd_adl_events_total", market=m),
        }
        for m in markets
    }
    r["check_state"] = {"violations": final["violations"], "digest": final["digest"]}
    r["updates_total"] = {
        o: _metric(metrics1, "riskd_updates_total", outcome=o)
        for o in ("applied", "rejected", "duplicate")
    }
    return r


def _mark_ts(ts0_ms: int, hz: float, k: int) -> int:
    """The gateway timestamp of mark tick k."""
    return ts0_ms + round(k * 1000 / hz)


async def _mark_feed(
    target: str, markets: list[str], path: dict[str, list[int]], hz: float, t0: float, ts0: int
) -> tuple[Feed, bool]:
    """Every tick on schedule (never shed), then wait for the last acknowledgement."""
    ticks = len(path[markets[0]])
    feed = Feed(target, "stress-marks", mark_builder(markets, path, ts0, hz))
    await feed.open()
    await feed.open_loop(t0, hz, ticks, None)
    drained = await feed.finish(timeout=60)
    return feed, drained


def _mark_report(
    ns: argparse.Namespace,
    feed: Feed,
    drained: bool,
    path: dict[str, list[int]],
    ts0: int,
    final: dict[str, Any],
    metrics: list[tuple[str, dict[str, str], float]],
) -> dict[str, Any]:
    markets = list(path)
    ticks = len(path[markets[0]])
    last_s = _mark_ts(ts0, ns.mark_hz, ticks - 1) / 1000
    check = {
        m: {
            "sent_last": path[m][-1],
            "riskd": final["marks"].get(m),
            "timestamp_s_sent": last_s,
            "timestamp_s_riskd": _metric(metrics, "riskd_mark_price_timestamp_seconds", market=m),
        }
        for m in markets
    }
    matches = all(
        c["sent_last"] == c["riskd"] and abs(c["timestamp_s_sent"] - c["timestamp_s_riskd"]) < 1e-3
        for c in check.values()
    )
    send, due = sorted(feed.latency_send), sorted(feed.latency_due)
    return {
        "hz": ns.mark_hz,
        "markets": markets,
        "ticks_planned": ticks,
        "ticks_sent": math.ceil(feed.high / len(markets)),
        "ticks_acked": feed.acked // len(markets),
        "updates_sent": feed.high,
        "updates_acked": feed.acked,
        "rejections": feed.c.rejections,
        "rejection_examples": feed.c.rejection_examples,
        "refusals": feed.c.refusals,
        "drained": drained,
        "ack_latency_ms": {
            "from_send_p50": 1000 * _pct(send, 0.5),
            "from_send_p99": 1000 * _pct(send, 0.99),
            "from_send_max": 1000 * _pct(send, 1.0),
            "from_due_max": 1000 * _pct(due, 1.0),
            "max_send_delay": 1000 * feed.c.max_send_delay_s,
        },
        "final": check,
        "final_matches": matches,
    }


def _cpus(daemon_pid: int, gen_pid: int) -> tuple[float, float, float, float]:
    return time.perf_counter(), _cpu_s(daemon_pid), _cpu_s(gen_pid), time.process_time()


def _metric(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
    )


def run_stress(ns: argparse.Namespace) -> dict[str, Any]:
    """Start riskd, drive it, stop it; everything measured, and the problems found."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="riskd-stress-") as tmp_name:
        daemon = _start_daemon(Path(tmp_name), ns.config, ns.riskd_root)
        assert daemon.metrics_port is not None
        sampler = Sampler(daemon)
        sampler.start()
        try:
            r = asyncio.run(_drive(ns, daemon, sampler))
            r["queue_wait_ms"] = _queue_wait(scrape(daemon.metrics_port))
        except BaseException:
            log(f"riskd log tail:\n{daemon.log_path.read_text(errors='replace')[-3000:]}")
            raise
        finally:
            sampler.stop()
            alive = daemon.proc.poll() is None
            hwm = _rss_kb(daemon.pid, "VmHWM") / 1024 if alive else float("nan")
            code = daemon.stop(60)
        lines = daemon.log_path.read_text(errors="replace").splitlines()
    o = r["overload"]
    overload = [x for x in sampler.samples if x["phase"] == "overload" and "rss_mb" in x]
    boxes: dict[str, float] = {}
    for x in overload:
        for k, v in x.get("mailboxes", {}).items():
            boxes[k] = max(boxes.get(k, 0.0), v)
    r["rss_mb"].update(
        overload_max=max((x["rss_mb"] for x in overload), default=float("nan")),
        end=next((x["rss_mb"] for x in reversed(sampler.samples) if "rss_mb" in x), float("nan")),
        hwm=hwm,
    )
    r.update(
        command=harness.display([sys.executable, "-m", "benchmarks.stress", *ns.argv]),
        riskd_revision=_revision(ns.riskd_root or ROOT),
        offered_updates_per_s=o["offered_updates"] / o["seconds"],
        accepted_updates_per_s=o["accepted_updates"] / o["elapsed_s"],
        not_accepted_pct=100 * (1 - o["accepted_updates"] / max(o["offered_updates"], 1)),
        mailbox_max=boxes,
        streams_open_max=max((x.get("streams_open", 0) for x in overload), default=0),
        socket_queues_max_kb={
            k: max((x.get(f"socket_{k}_kb", 0.0) for x in overload), default=0.0)
            for k in ("unread", "unsent")
        },
        generator_rss_max_mb=max((x.get("generator_rss_mb", 0.0) for x in overload), default=0.0),
        daemon={
            "alive_at_end": alive,
            "exit_code": code,
            "error_log_lines": [x for x in lines if '"level": "error"' in x][:5],
            "warning_log_lines": sum('"level": "warning"' in x for x in lines),
        },
        samples=sampler.samples,
        sampler_errors=sampler.errors,
        runtime_s=time.perf_counter() - started,
        cpus=os.cpu_count(),
    )
    r["problems"] = _problems(r)
    return r


def _queue_wait(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, dict[str, float]]:
    """Per kind, from ``riskd_ingest_queue_seconds`` over the whole run: how many
    batches, and the bucket bounds (ms) under which 50 % and 99 % of them waited."""
    out: dict[str, dict[str, float]] = {}
    for kind in ("liquidation_path", "other"):
        buckets = sorted(
            (float(labels["le"]), v)
            for name, labels, v in samples
            if name == "riskd_ingest_queue_seconds_bucket" and labels.get("kind") == kind
        )
        total = buckets[-1][1] if buckets else 0.0
        row = {"batches": total}
        for q in (0.5, 0.99):
            le = next((b for b, n in buckets if n >= q * total), float("inf"))
            row[f"p{round(q * 100)}_le"] = le * 1000
        out[kind] = row
    return out


def _revision(root: Path) -> str | None:
    """The commit riskd ran from, "+dirty" if riskd/ had uncommitted changes."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        out.check_returncode()
        return out.stdout.strip()

    try:
        rev, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "riskd")
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


def _problems(r: dict[str, Any]) -> list[str]:
    """What went wrong ([] when every check passed)."""
    bad = []
    m = r["marks"]
    if m["ticks_acked"] != m["ticks_planned"] or m["updates_acked"] != m["updates_sent"]:
        bad.append(f"marks: {m['ticks_acked']} of {m['ticks_planned']} ticks acknowledged")
    if m["rejections"]:
        bad.append(f"marks: {m['rejections']} rejected: {m['rejection_examples']}")
    if not m["final_matches"]:
        bad.append(f"riskd's last marks differ from the last sent: {m['final']}")
    for market, x in r["liquidations"].items():
        if x["in_progress_at_end"]:
            bad.append(f"{market}: {x['in_progress_at_end']:g} liquidations still in progress")
        if x["replay_exact"] and x["settled"] != x["engine_replay"]:
            bad.append(
                f"{market}: {x['settled']:g} liquidations settled, the engine replay of the"
                f" marks settles {x['engine_replay']}"
            )
    if r["check_state"]["violations"]:
        bad.append(f"CheckState: {r['check_state']['violations'][:3]}")
    o = r["overload"]
    if o["rejections"]:
        bad.append(f"{o['rejections']} fill rejections: {o['rejection_examples']}")
    if o["failures"]:
        bad.append(f"generator: {o['failures'][:2]}")
    d = r["daemon"]
    if not d["alive_at_end"] or d["exit_code"] != 0:
        bad.append(f"riskd exit code {d['exit_code']} (alive at the end: {d['alive_at_end']})")
    if d["error_log_lines"]:
        bad.append(f"riskd logged errors: {d['error_log_lines'][:2]}")
    return bad


def print_report(r: dict[str, Any]) -> None:
    o, m, rss, cap = r["overload"], r["marks"], r["rss_mb"], r["capacity"]
    offered = max(o["offered_updates"], 1)

    def pct(n: float) -> str:
        return f"{100 * n / offered:.1f} %"

    shed = o["shed_updates"]
    lat, fl, c = m["ack_latency_ms"], o["fill_ack_latency_ms"], r["cores_during_overload"]
    most = max((x["unacked_batches"] for x in o["series"]), default=0)
    boxes = ", ".join(f"{k} {v:g}" for k, v in sorted(r["mailbox_max"].items()) if v)
    liq = ", ".join(
        f"{k} {v['settled']:g} (replay {v['engine_replay']}{'' if v['replay_exact'] else '*'})"
        for k, v in r["liquidations"].items()
    )
    d, q = r["daemon"], r["socket_queues_max_kb"]
    out = [
        f"stress: {o['gateways']} gateway streams x {o['batch']} fills/message, open loop at"
        f" {r['offered_updates_per_s'] / cap['updates_per_s']:.2f} x capacity for"
        f" {o['seconds']:g}s, plus 1 mark stream ({m['hz']:g} ticks/s x {len(m['markets'])}"
        " markets)",
        f"  capacity: {cap['updates_per_s']:,.0f} updates/s"
        + (
            f", closed loop ({WINDOW} batches in flight per stream, refusals"
            f" {cap['refusals'] or 0})"
            if cap["measured"]
            else " (given, --capacity)"
        ),
        f"  offered {r['offered_updates_per_s']:,.0f} updates/s, accepted"
        f" {r['accepted_updates_per_s']:,.0f} updates/s"
        f" ({r['accepted_updates_per_s'] / cap['updates_per_s']:.2f} x capacity)",
        f"  pushed back: {r['not_accepted_pct']:.1f} % of offered not accepted = shed"
        f" {pct(sum(shed.values()))} (flow control {pct(shed['flow_control'])}, refused"
        f" {pct(shed['refused'])}, generator lag {pct(shed['generator'])}) + unacknowledged at"
        f" the stop {pct(o['unacked_updates_at_stop'])} + resent {pct(o['resent_updates'])}",
        f"  writers blocked in write() {o['blocked_s_per_gateway']:.1f}s of {o['elapsed_s']:.1f}s"
        f" per gateway; most unacknowledged at once {most:,} batches",
        f"  refusals {o['refusals'] or 0} ({o['refusals_with_retry_info']} with RetryInfo,"
        f" {o['retry_wait_s']:.1f}s waited); fill rejections {o['rejections']}",
        f"  fill batches acknowledged, latency from their slot: p50 {fl['p50']:,.0f} ms, p99"
        f" {fl['p99']:,.0f} ms, max {fl['max']:,.0f} ms; the oldest unacknowledged at the stop"
        f" was due {o['oldest_unacked_at_stop_s']:.1f}s before",
        f"  riskd RSS: {rss['after_setup']:.1f} MB after set-up, {rss['overload_start']:.1f} at"
        f" the overload's start, max {rss['overload_max']:.1f}, end {rss['end']:.1f}"
        f" (VmHWM {rss['hwm']:.1f})",
        f"  mailbox max depth during the overload: {boxes or 'all 0'}; kernel TCP queues to"
        f" riskd at most {q['unread']:,.0f} kB unread by riskd, {q['unsent']:,.0f} kB unsent;"
        f" generator RSS max {r['generator_rss_max_mb']:.1f} MB",
        f"  marks: {m['ticks_sent']} ticks sent, {m['ticks_acked']} acknowledged,"
        f" {m['rejections']} rejected, refusals {m['refusals'] or 0}; ack latency from send"
        f" p50 {lat['from_send_p50']:.1f} ms, p99 {lat['from_send_p99']:.1f} ms, max"
        f" {lat['from_send_max']:.1f} ms (from due, max {lat['from_due_max']:.1f} ms);"
        f" riskd's last marks = last sent: {m['final_matches']}",
        "  waiting to be sequenced (riskd_ingest_queue_seconds, whole run): "
        + "; ".join(
            f"{k} {v['batches']:,.0f} batches, p50 <= {v['p50_le']:g} ms, p99 <= {v['p99_le']:g} ms"
            for k, v in r["queue_wait_ms"].items()
        ),
        f"  liquidations settled: {liq}; CheckState violations:"
        f" {len(r['check_state']['violations'])}",
        f"  CPU during the overload (cores, of {r['cpus']}): riskd {c.get('riskd', 0):.2f},"
        f" generator {c.get('generator', 0):.2f} (1 process, {o['generator_threads']} threads),"
        f" driver {c.get('driver', 0):.2f}",
        f"  riskd exit {d['exit_code']}; {len(d['error_log_lines'])} error and"
        f" {d['warning_log_lines']} warning log lines; run {r['runtime_s']:.0f}s",
        "  OK" if not r["problems"] else "  PROBLEMS: " + "; ".join(r["problems"]),
        f"  $ {r['command']}  (riskd {r['riskd_revision']})",
    ]
    print("\n".join(out))
    if any(not v["replay_exact"] for v in r["liquidations"].values()):
        print("  (* the gateways' fills come between the marks there: the replay is indicative)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.stress", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--seconds", type=float, default=60.0, help="overload duration (60)")
    p.add_argument("--gateways", type=int, default=4, help="fill streams (4)")
    p.add_argument("--factor", type=float, default=2.0, help="offered load / capacity (2.0)")
    p.add_argument("--batch", type=int, default=BATCH, help=f"fills per message ({BATCH})")
    p.add_argument("--mark-hz", type=float, default=20.0, help="mark ticks per second (20)")
    p.add_argument("--capacity-seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument(
        "--capacity",
        type=float,
        default=0.0,
        metavar="UPDATES_PER_S",
        help="skip the closed-loop measurement and take this as the capacity",
    )
    p.add_argument("--config", help="riskd config file (default: the embedded one)")
    p.add_argument("--json", metavar="OUT", type=Path, help="also write the report as JSON")
    p.add_argument("--riskd-root", type=Path, metavar="DIR", help="run riskd from this source tree")
    sub = p.add_subparsers(dest="worker")
    g = sub.add_parser("gen", help="the load generator (started by the driver)")
    g.add_argument("--target", required=True)
    g.add_argument("--gateways", type=int, required=True)
    g.add_argument("--batch", type=int, required=True)
    g.add_argument("--factor", type=float, required=True)
    g.add_argument("--seconds", type=float, required=True)
    g.add_argument("--capacity-seconds", type=float, required=True)
    g.add_argument("--warmup", type=float, required=True)
    g.add_argument("--capacity", type=float, default=0.0)
    ns = p.parse_args(argv)
    if ns.worker == "gen":
        asyncio.run(_generate(ns))
        return 0
    ns.argv = argv
    report = run_stress(ns)
    print_report(report)
    if ns.json:
        ns.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
