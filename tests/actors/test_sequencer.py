"""The sequencer with real actors (no gRPC): kept rejections, replay, withdrawal gating.

Every test builds the daemon's actors from a config (:class:`riskd.daemon.Daemon`,
nothing listening) and runs them in a trio nursery.  A recording journal stands
in for SQLite so the records the sequencer writes can be replayed into a fresh
set of actors, as a restart does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskd.actors.journal import Durable
from riskd.actors.sequencer import SequenceError, Sequencer, StoredRejection
from riskd.config import default_toml, parse
from riskd.core import Code, Engine, Rejected
from riskd.core.events import (
    Deposit,
    Fill,
    FundInjection,
    Input,
    LiquidationDone,
    MarginTransfer,
    MarkPrice,
    SetMarginMode,
    SettleMarket,
    Withdrawal,
)
from riskd.core.invariants import digest
from riskd.daemon import Daemon
from riskd.metrics import Metrics

USDT = 10**6
M = "BTC-USDT"


class Recorder:
    """A journal that keeps the records in memory and is durable at once."""

    def __init__(self) -> None:
        self.records: list[str] = []
        self.written = 0

    async def submit(self, record: str | None, value: Any, on_durable: Any = None) -> Durable[Any]:
        if record is not None:
            self.records.append(record)
            self.written += 1
        if on_durable is not None:
            on_durable()
        return Durable.ready(value)

    async def submit_many(self, items: list[tuple[str | None, Any, Any]]) -> list[Durable[Any]]:
        return [await self.submit(*item) for item in items]


def config(book: bool = False) -> Any:
    text = default_toml()
    if book:  # BTC-USDT works liquidations through the book on the fund's reservation
        text = text.replace(
            '[markets.BTC-USDT]\ncontract_type = "linear"',
            '[markets.BTC-USDT]\ncontract_type = "linear"\nliquidation_mode = "book"',
        ).replace('liquidation_mode = "takeover"\nadl_policy', "adl_policy", 1)
    return parse(text)


@contextlib.asynccontextmanager
async def running(book: bool = False, retained: int = 8) -> AsyncIterator[Sequencer]:
    d = Daemon(config(book), Metrics())
    d.sequencer.retained_sequences = retained
    async with trio.open_nursery() as nursery:
        for actor in d.actors():
            await nursery.start(actor.run)
        yield d.sequencer
        nursery.cancel_scope.cancel()


async def result(value: Any) -> Any:
    assert isinstance(value, Durable), value  # every write answers with one
    return await value.wait()


def bad(i: int) -> Rejected:
    return Rejected.invalid(f"updates[{i}].mark_price.price", "must be > 0")


async def test_rejections_are_kept_for_a_reconnect_bounded_and_rebuilt_by_replay() -> None:
    records: list[str]
    async with running(retained=8) as s:
        s.journal = Recorder()  # type: ignore[assignment]
        # seq 2: refused at decoding; seq 3: an unknown market (refused by the sequencer).
        batch = [
            (1, MarkPrice(M, 5_000_000)),
            (2, bad(1)),
            (3, MarkPrice("NOPE", 1)),
        ]
        r = await result(await s.ingest("gw", 1, batch))
        assert [seq for seq, _ in r.rejections] == [2, 3]
        resume = s.resume("gw", 1)
        assert (resume.acked, resume.rejections_from) == (3, 1)
        assert resume.rejections == [
            (2, 1, "", "INVALID_ARGUMENT", "updates[1].mark_price.price", "must be > 0", ""),
            (3, 2, "MarkPrice", "NOT_FOUND", "market", "unknown market 'NOPE'", ""),
        ]
        assert s.resume("gw", 2) == type(resume)(0, 0, [])  # another epoch: nothing
        # A resend of 1..3 plus 4: the duplicates' rejections come back as first decided.
        r = await result(await s.ingest("gw", 1, [*batch, (4, bad(3))]))
        assert r.acked == 4 and r.duplicates == 3
        assert [x[0] for x in r.repeated] == [2, 3] and [seq for seq, _ in r.rejections] == [4]
        # Past the retained sequences the oldest go: a window of 8 sequences.
        for seq in range(5, 13):
            await result(await s.ingest("gw", 1, [(seq, bad(0))]))
        resume = s.resume("gw", 1)
        assert resume.acked == 12 and resume.rejections_from == 5
        assert [x[0] for x in resume.rejections] == list(range(5, 13))
        before = resume
        records = list(s.journal.records)  # type: ignore[attr-defined]
    async with running(retained=8) as again:
        for text in records:
            await again.replay(text)
        assert again.resume("gw", 1) == before


async def test_the_index_of_a_rejection_survives_replay_after_leading_duplicates() -> None:
    async with running() as s:
        s.journal = Recorder()  # type: ignore[assignment]
        await s.ingest("gw", 1, [(1, MarkPrice(M, 5_000_000))])
        # The batch starts with a duplicate: seq 3 sits at index 2 of the request.
        await s.ingest("gw", 1, [(1, MarkPrice(M, 5_000_000)), (2, bad(1)), (3, bad(2))])
        kept = s.resume("gw", 1).rejections
        assert [(x[0], x[1]) for x in kept] == [(2, 1), (3, 2)]
        records = list(s.journal.records)  # type: ignore[attr-defined]
    async with running() as again:
        for text in records:
            await again.replay(text)
        assert again.resume("gw", 1).rejections == kept


def book_setup(t: int) -> list[Input]:
    """Account 1 long 0.1 BTC at 50,000 on 500 USDT, account 2 short; a funded fund."""
    return [
        Deposit(1, "USDT", 10_000 * USDT, t),
        Deposit(2, "USDT", 10_000 * USDT, t),
        MarginTransfer(1, M, 500 * USDT, t),
        MarginTransfer(2, M, 5_000 * USDT, t),
        MarkPrice(M, 5_000_000, t),
        Fill(M, 1, 1, 2, 5_000_000, 100, 0, 0, t),
    ]


async def apply(s: Sequencer, seq: int, inputs: list[Input]) -> int:
    for x in inputs:
        if isinstance(x, FundInjection):
            await s.inject(x)
            continue
        seq += 1
        r = await result(await s.ingest("gw", 1, [(seq, x)]))
        assert r.rejections == [], (x, r.rejections)
    return seq


async def withdraw(s: Sequencer, w: Withdrawal, id_: int) -> Any:
    return await result(await s.withdraw(w, id_))


async def test_withdrawals_pause_while_a_book_liquidation_is_unsettled_and_resume() -> None:
    t = 1_700_000_000_000
    inject = FundInjection("USDT", 100_000 * USDT, "seed", t)
    engine = Engine(config(book=True).markets)
    async with running(book=True) as s:
        seq = await apply(s, 0, [*book_setup(t), inject])
        assert (await withdraw(s, Withdrawal(2, "USDT", USDT), 1)).approved
        seq = await apply(s, seq, [MarkPrice(M, 4_515_000, t + 1000)])  # account 1 crosses
        liquidations = s.markets[M].engine.liquidations
        assert len(liquidations) == 1
        (lid,) = liquidations
        assert s.funds["USDT"].fund.reserved_total > 0
        with pytest.raises(Rejected) as info:
            await withdraw(s, Withdrawal(2, "USDT", USDT), 2)
        assert (info.value.code, info.value.field) == (Code.FAILED_PRECONDITION, "asset")
        assert f"{M} liquidation {lid}" in info.value.message
        assert "resume" in info.value.message
        # The pure engine refuses it the same way (journal replay and the audit agree).
        for x in [*book_setup(t), inject, Withdrawal(2, "USDT", USDT, 0)]:
            engine.apply(x)
        engine.apply(MarkPrice(M, 4_515_000, t + 1000))
        with pytest.raises(Rejected):
            engine.apply(Withdrawal(2, "USDT", USDT))
        # Nothing was remembered for id 2: once the liquidation settles it goes through.
        await apply(s, seq, [LiquidationDone(M, lid, t + 2000)])
        engine.apply(LiquidationDone(M, lid, t + 2000))
        assert s.markets[M].engine.liquidations == {}
        decision = await withdraw(s, Withdrawal(2, "USDT", USDT), 2)
        assert decision.approved
        engine.apply(Withdrawal(2, "USDT", USDT))
        assert s.check()[0] == digest(engine)


async def test_a_refused_withdrawal_reports_the_balance_and_a_retry_the_same_decision() -> None:
    async with running() as s:
        s.journal = Recorder()  # type: ignore[assignment]
        await apply(s, 0, [Deposit(1, "USDT", 900_000)])
        refused = await withdraw(s, Withdrawal(1, "USDT", 1_000_000), 5)
        assert not refused.approved and refused.balance == 900_000
        assert "900000" in refused.reason
        ok = await withdraw(s, Withdrawal(1, "USDT", 400_000), 6)
        assert ok.approved and ok.balance == 500_000
        # Retries: the original decisions, nothing moves.
        assert await withdraw(s, Withdrawal(1, "USDT", 1_000_000), 5) == refused
        assert await withdraw(s, Withdrawal(1, "USDT", 400_000), 6) == ok
        assert s.wallets["USDT"].wallets.balance(1) == 500_000
        records = list(s.journal.records)  # type: ignore[attr-defined]
    async with running() as again:
        for text in records:
            await again.replay(text)
        assert await withdraw(again, Withdrawal(1, "USDT", 400_000), 6) == ok
        assert await withdraw(again, Withdrawal(1, "USDT", 1_000_000), 5) == refused
        assert again.wallets["USDT"].wallets.balance(1) == 500_000


async def test_a_withdrawal_is_journaled_with_riskds_clock_and_replay_keeps_the_stamp() -> None:
    async with running() as s:
        s.journal = Recorder()  # type: ignore[assignment]
        s.clock = lambda: 1_700_000_000_123
        await apply(s, 0, [Deposit(1, "USDT", 900_000)])
        assert (await withdraw(s, Withdrawal(1, "USDT", 400_000), 6)).approved
        records = list(s.journal.records)  # type: ignore[attr-defined]
    assert '"ts":1700000000123' in records[-1].replace(" ", ""), records[-1]
    async with running() as again:
        for text in records:
            await again.replay(text)
        assert again.wallets["USDT"].wallets.balance(1) == 500_000


def test_stored_rejections_are_plain_values() -> None:
    # They are pickled into snapshots and compared after replay.
    r: StoredRejection = (1, 0, "Fill", "INVALID_ARGUMENT", "price", "bad")
    assert all(isinstance(v, int | str) for v in r)


async def test_a_first_response_carries_the_newest_rejections_and_says_from_where() -> None:
    import riskd.actors.sequencer as sequencer_module

    async with running(retained=100) as s:
        limit = sequencer_module.MAX_RESUME_REJECTIONS
        sequencer_module.MAX_RESUME_REJECTIONS = 5
        try:
            await s.ingest("gw", 1, [(seq, bad(seq - 1)) for seq in range(1, 21)])
            resume = s.resume("gw", 1)
        finally:
            sequencer_module.MAX_RESUME_REJECTIONS = limit
        assert resume.acked == 20
        assert [x[0] for x in resume.rejections] == [16, 17, 18, 19, 20]
        assert resume.rejections_from == 16  # 1..15 are not in it: the gateway can tell


async def test_each_update_goes_to_the_owner_its_kind_names_and_an_unknown_one_is_not_found() -> (
    None
):
    """Routing reads riskd.core.inputs.KINDS: a deposit by its asset, the rest by market."""
    async with running() as s:
        batch: list[tuple[int, Input | Rejected]] = [
            (1, Deposit(1, "USDT", 1_000 * USDT)),
            (2, Deposit(2, "NOPE", 1)),
            (3, MarginTransfer(1, M, 100 * USDT)),
            (4, MarkPrice("NOPE", 1)),
            (5, MarkPrice(M, 5_000_000)),
        ]
        done = await s.ingest("gw", 1, batch)
        assert done.released  # no journal attached: nothing to wait for
        r = await done.wait()
        assert r.acked == 5
        assert [(seq, x.code, x.field, x.message) for seq, x in r.rejections] == [
            (2, Code.NOT_FOUND, "asset", "unknown asset 'NOPE'"),
            (4, Code.NOT_FOUND, "market", "unknown market 'NOPE'"),
        ]
        balance = await s.wallets["USDT"].call(s.wallets["USDT"].balance, 1)
        assert balance == 900 * USDT  # the deposit reached the wallet, the transfer the market


async def test_every_write_answers_durable_and_a_sequence_gap_is_a_result() -> None:
    async with running() as s:
        resumed = await s.open_session("gw", 5)
        assert resumed.released and (await resumed.wait()).epoch == 5
        gap = await s.ingest_or_error("gw", 5, [(3, MarkPrice(M, 5_000_000))])
        error = await gap.wait()
        assert isinstance(error, SequenceError) and error.expected == 1
        ok = await (await s.ingest_or_error("gw", 5, [(1, MarkPrice(M, 5_000_000))])).wait()
        assert not isinstance(ok, SequenceError) and ok.acked == 1
        assert (await (await s.flushed()).wait()) is None


# --- one turn for many batches (Sequencer.ingest_group) ------------------------

_UPDATE = st.sampled_from(
    [
        Deposit(1, "USDT", 1_000 * USDT),
        Deposit(2, "USDT", 1_000 * USDT),
        Deposit(3, "NOPE", 1),  # refused by the sequencer: unknown asset
        MarginTransfer(1, M, 100 * USDT),
        MarginTransfer(2, M, 100 * USDT),
        MarkPrice(M, 5_000_000),
        MarkPrice(M, 5_010_000),
        MarkPrice("ETH-USDT", 300_000),
        MarkPrice(M, 0),  # refused by the market
        Fill(M, 0, 1, 2, 5_000_000, 10, 0, 0),  # trade id 0: refused unless ids are off
        Fill(M, 7, 1, 2, 5_000_000, 10, 0, 0),
        Fill(M, 8, 2, 1, 5_010_000, 20, 0, 0),
        bad(0),  # refused at decoding
    ]
)


@st.composite
def _posts(draw: st.DrawFn) -> list[tuple[str, list[tuple[int, Input | Rejected]]]]:
    """Batches of two gateways, some resent in part, some leaving a gap."""
    sent = {"a": 0, "b": 0}
    out: list[tuple[str, list[tuple[int, Input | Rejected]]]] = []
    for _ in range(draw(st.integers(1, 8))):
        gw = draw(st.sampled_from(["a", "b"]))
        start = sent[gw] + 1 + draw(st.sampled_from([0, 0, 0, -1, -2, 1]))
        start = max(start, 1)
        body = draw(st.lists(_UPDATE, min_size=1, max_size=4))
        batch = [(start + i, x) for i, x in enumerate(body)]
        if start <= sent[gw] + 1:  # no gap: the gateway's order moves on
            sent[gw] = max(sent[gw], batch[-1][0])
        out.append((gw, batch))
    return out


def _seen(answer: object) -> object:
    """What a gateway is told about a batch, in comparable values."""
    if isinstance(answer, SequenceError):
        return ("gap", answer.expected)
    return (
        answer.acked,  # type: ignore[attr-defined]
        answer.duplicates,  # type: ignore[attr-defined]
        [(seq, r.code, r.field) for seq, r in answer.rejections],  # type: ignore[attr-defined]
        answer.repeated,  # type: ignore[attr-defined]
    )


async def _through(
    posts: list[tuple[str, list[tuple[int, Input | Rejected]]]], cuts: list[int]
) -> tuple[list[object], list[str], str]:
    """Post the batches grouped as ``cuts`` says; what each was told, the journal, the digest."""
    async with running() as s:
        s.journal = Recorder()  # type: ignore[assignment]
        told: list[object] = []
        groups = [posts[a:b] for a, b in zip([0, *cuts], [*cuts, len(posts)], strict=True)]
        for group in groups:
            if not group:
                continue
            answers = await s.ingest_group([(gw, 1, batch, None, "other") for gw, batch in group])
            assert len(answers) == len(group)
            told += [_seen(await a.wait()) for a in answers]
        records = list(s.journal.records)  # type: ignore[attr-defined]
        return told, records, (await s.barrier(s.check))[0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(posts=_posts(), data=st.data())
def test_batches_sequenced_in_one_turn_end_as_if_sequenced_one_by_one(
    posts: list[tuple[str, list[tuple[int, Input | Rejected]]]], data: st.DataObject
) -> None:
    """However the bridge groups what crossed together, every batch is answered,
    journaled and applied exactly as when each had its own turn."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(posts)), max_size=len(posts))))
    one_by_one = trio.run(_through, posts, list(range(1, len(posts))))
    grouped = trio.run(_through, posts, cuts)
    assert grouped == one_by_one


_B, _E = "BTC-USDT", "ETH-USDT"
_LOT = {_B: 10, _E: 100}  # 0.01 BTC, 0.1 ETH: 500 and 300 USDT at the marks


async def _settled_through_actors(
    inputs: list[Input], settle: SettleMarket
) -> tuple[str, list[str], str | None, str]:
    """``inputs`` streamed, then ``settle`` as the admin RPC sends it: the digest and
    violations after, the refusal if any, and the digest of a replay of the journal."""
    async with running() as s:
        s.journal = Recorder()  # type: ignore[assignment]
        for seq, x in enumerate(inputs, 1):
            await result(await s.ingest("gw", 1, [(seq, x)]))
        refused: str | None = None
        try:
            await result(await s.admin_input(settle))
        except Rejected as r:
            refused = r.field
        got, broken = await s.barrier(s.check)
        records = list(s.journal.records)  # type: ignore[attr-defined]
    async with running() as again:
        for record in records:
            await again.replay(record)
        replayed, _ = await again.barrier(again.check)
    return got, broken, refused, replayed


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    trades=st.lists(
        st.tuples(st.booleans(), st.integers(1, 4), st.integers(1, 4), st.integers(1, 10)),
        min_size=1,
        max_size=8,
    ),
    crossed=st.sets(st.integers(1, 4), min_size=1),
    wallet=st.integers(100, 2_000),
    move=st.integers(-300, 300),
    other=st.integers(-100, 100),
    first=st.booleans(),
)
def test_settling_cross_positions_in_the_actors_is_the_pure_engines_settlement(
    trades: list[tuple[bool, int, int, int]],
    crossed: set[int],
    wallet: int,
    move: int,
    other: int,
    first: bool,
) -> None:
    """Random books of cross and isolated accounts over BTC and ETH, one market
    settled anywhere: the sequencer's settlement across the market, wallet and
    other market actors (riskd.actors.cross) ends exactly where Engine's does,
    and a replay of its journal too."""
    t = 1_700_000_000_000
    inputs: list[Input] = [Deposit(5, "USDT", 100_000 * USDT, t)]
    for a in range(1, 5):
        if a in crossed:
            inputs += [Deposit(a, "USDT", wallet * USDT, t)]
            inputs += [SetMarginMode(_B, a, True, t), SetMarginMode(_E, a, True, t)]
        else:
            inputs += [Deposit(a, "USDT", 20_000 * USDT, t)]
            inputs += [MarginTransfer(a, _B, 10_000 * USDT, t)]
            inputs += [MarginTransfer(a, _E, 10_000 * USDT, t)]
    inputs += [MarginTransfer(5, sym, 50_000 * USDT, t) for sym in (_B, _E)]
    marks = {_B: 5_000_000, _E: 300_000}
    inputs += [MarkPrice(sym, p, t) for sym, p in marks.items()]
    for n, (in_btc, buyer, seller, qty) in enumerate(trades, 1):
        # A trade in each market, opposite ways (5, the isolated maker, for one alone).
        buyer, seller = (buyer, seller) if buyer != seller else (buyer, 5)
        one, two = (_B, _E) if in_btc else (_E, _B)
        inputs.append(Fill(one, 2 * n, buyer, seller, marks[one], qty * _LOT[one]))
        inputs.append(Fill(two, 2 * n + 1, seller, buyer, marks[two], qty * _LOT[two]))
    sym, rest = (_B, _E) if first else (_E, _B)
    inputs.append(MarkPrice(rest, marks[rest] * (1_000 + other) // 1_000, t + 1))
    settle = SettleMarket(sym, marks[sym] * (1_000 + move) // 1_000, t + 2)

    engine = Engine(config().markets)
    refused: str | None = None
    for x in inputs:
        with contextlib.suppress(Rejected):
            engine.apply(x)
    try:
        engine.apply(settle)
    except Rejected as r:
        refused = r.field
    got, broken, daemon_refused, replayed = trio.run(_settled_through_actors, inputs, settle)
    assert broken == []
    assert (got, daemon_refused) == (digest(engine), refused)
    assert replayed == got


async def test_a_run_reaches_an_idle_market_in_the_sequencers_task_and_a_busy_one_after_it() -> (
    None
):
    """The turn's market hop (Actor.call_here): an idle market's run is applied
    in the task that sequences it, no round trip; a market busy with an earlier
    message gets it through its mailbox, after that message. Same results."""
    async with running() as s:
        market = s.markets[M]
        ran: list[tuple[str, bool]] = []
        apply = market.apply

        async def recording(items: list[Input]) -> list[Rejected | None]:
            ran.append(("apply", trio.lowlevel.current_task() is caller))
            return await apply(items)

        market.apply = recording  # type: ignore[method-assign]
        caller = trio.lowlevel.current_task()
        await trio.testing.wait_all_tasks_blocked()
        first = await (await s.ingest("gw", 1, [(1, MarkPrice(M, 5_000_000))])).wait()
        gate = trio.Event()

        async def busy() -> None:
            await gate.wait()
            ran.append(("busy", False))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(market.call, busy)
            await trio.testing.wait_all_tasks_blocked()  # the market runs busy()
            done: list[Any] = []

            async def second() -> None:
                done.append(await (await s.ingest("gw", 1, [(2, MarkPrice(M, 5_000_100))])).wait())

            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            assert ran == [("apply", True)]  # the second run waits behind busy()
            gate.set()
        assert ran == [("apply", True), ("busy", False), ("apply", False)]
        assert (first.acked, first.rejections, done[0].acked, done[0].rejections) == (1, [], 2, [])
        assert market.engine.mark == 5_000_100
