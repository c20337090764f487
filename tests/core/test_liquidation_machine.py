"""The liquidation state machine: one table of transitions, the index it owns.

And queries that write nothing.
"""

from __future__ import annotations

import ast
import importlib
import pickle
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _kit import btc_usdt_spec
from test_invariants_stateful import random_inputs, run

from riskd.core import Liquidation, LiquidationDone, MarketEngine, Position, Rejected, Stage, digest
from riskd.core.liquidation_machine import (
    TRANSITIONS,
    Event,
    IllegalTransition,
    LiquidationMachine,
    next_stage,
)
from riskd.core.liquidator import Liquidator
from riskd.core.position import NOT_INDEXED
from riskd.errors import RiskdError

LIVE = [s for s in Stage if s is not Stage.SETTLED]
ALL_PAIRS = [(s, e) for s in Stage for e in Event]


def _at(stage: Stage) -> tuple[LiquidationMachine, Liquidation, Position]:
    """A machine with one liquidation in ``stage`` (reached through the table)."""
    m = LiquidationMachine()
    pos = Position(7)
    pos.size = 10
    liq = m.open(pos, takeover=False, price=100, ts=0)
    path = {
        Stage.AWAITING_FUND: [],
        Stage.WORKING: [Event.ORDER],
        Stage.COOLING: [Event.FILLED_PART],
        Stage.AWAITING_ADL: [Event.DELEVERAGE],
    }
    for event in path[stage]:
        m.move(liq, event)
    assert liq.stage is stage
    return m, liq, pos


def test_the_table_names_every_stage_and_settled_is_final() -> None:
    assert {s for s, _ in TRANSITIONS} == set(LIVE)
    assert all((Stage.SETTLED, e) not in TRANSITIONS for e in Event)
    # Every live stage can end, and nothing leads back to waiting for the fund.
    assert all(TRANSITIONS[s, Event.END] is Stage.SETTLED for s in LIVE)
    assert Stage.AWAITING_FUND not in TRANSITIONS.values()


@pytest.mark.parametrize(("stage", "event"), sorted(TRANSITIONS, key=str))
def test_every_legal_transition(stage: Stage, event: Event) -> None:
    m, liq, pos = _at(stage)
    if event is Event.END:
        m.end(liq, pos)
        assert liq.id not in m.active and liq.id not in m.awaiting_adl
        assert pos.liquidation == 0
    else:
        m.move(liq, event)
        assert m.active[liq.id] is liq
        assert (liq.id in m.awaiting_adl) is (liq.stage is Stage.AWAITING_ADL)
    assert (liq.id in m.cooling_ids) is (liq.stage is Stage.COOLING)
    assert liq.stage is TRANSITIONS[stage, event]


@pytest.mark.parametrize(
    ("stage", "event"), [p for p in ALL_PAIRS if p not in TRANSITIONS], ids=str
)
def test_every_illegal_transition_raises(stage: Stage, event: Event) -> None:
    with pytest.raises(IllegalTransition) as info:
        next_stage(1, stage, event)
    assert (info.value.stage, info.value.event) == (stage, event)
    assert isinstance(info.value, RiskdError) and info.value.grpc_status == "INTERNAL"
    if stage is not Stage.SETTLED:
        m, liq, pos = _at(stage)
        with pytest.raises(IllegalTransition):
            if event is Event.END:
                m.end(liq, pos)
            else:
                m.move(liq, event)
        assert liq.stage is stage and m.active[liq.id] is liq  # nothing changed


def test_end_is_not_a_move_and_a_settled_one_cannot_end_twice() -> None:
    m, liq, pos = _at(Stage.WORKING)
    with pytest.raises(IllegalTransition):
        m.move(liq, Event.END)
    m.end(liq, pos)
    with pytest.raises(IllegalTransition):
        m.end(liq, pos)


def test_open_freezes_out_of_the_index_and_end_unfreezes() -> None:
    spec = btc_usdt_spec()
    m = LiquidationMachine()
    pos = Position(3)
    pos.size, pos.basis, pos.margin = 1_000, 25_000 * 10**6, 1_000 * 10**6
    m.track(spec, pos)
    assert len(m.index) == 1
    liq = m.open(pos, takeover=True, price=24_000_00, ts=5)
    assert (len(m.index), pos.liquidation, liq.quantity) == (0, liq.id, 1_000)
    assert pos.threshold == NOT_INDEXED
    m.track(spec, pos)  # a frozen position stays out
    assert len(m.index) == 0
    m.end(liq, pos)
    m.track(spec, pos)
    assert len(m.index) == 1 and m.next_id == 2


@pytest.mark.parametrize("seed", range(6))
def test_queries_write_nothing(seed: int) -> None:
    """``view`` ranks afresh: the ADL ranking cache (which ADL reuses) is untouched."""
    engine, _, _ = run(random_inputs(seed, 500))
    for market in engine.markets.values():
        before = digest(engine)
        cache = {k: (n, list(q)) for k, (n, q) in market._ranking.items()}
        for account in list(market.positions):
            market.view(account)
        assert {k: (n, list(q)) for k, (n, q) in market._ranking.items()} == cache
        assert digest(engine) == before


def class_source(cls: type) -> str:
    """A class's source read from its module's .py file (compiled or not)."""
    package, leaf = cls.__module__.rsplit(".", 1)
    text = (Path(importlib.import_module(package).__path__[0]) / f"{leaf}.py").read_text()
    node = next(
        n for n in ast.parse(text).body if isinstance(n, ast.ClassDef) and n.name == cls.__name__
    )
    return ast.get_source_segment(text, node) or ""


def test_position_numbers_change_in_one_place() -> None:
    """Outside ``change`` and ``_set`` (``_set_at``, the threshold known) nothing writes a
    position's margin, size or basis."""
    # From the .py files: a compiled core has no source for inspect to find.
    source = class_source(MarketEngine) + class_source(Liquidator)
    methods = re.split(r"\n    def ", source)
    writers = {
        m.split("(")[0]
        for m in methods
        if re.search(r"\b(pos|cp|trader|backstop)\.(margin|size|basis)\s*[+-]?=[^=]", m)
        or re.search(r"\.trade\(", m)
    }
    # _plan trades a copy; _sweep zeroes a record it drops.
    assert writers <= {"change", "_set_at", "_plan", "sweep"}, writers


def test_a_snapshot_from_before_the_machine_loads() -> None:
    """Old snapshots kept the index and liquidations on the market itself."""
    engine, _, _ = run(random_inputs(3, 400))
    for market in engine.markets.values():
        state = market.__getstate__()
        machine = state.pop("machine")
        state.update(
            index=machine.index,
            liquidations=machine.active,
            _awaiting_adl=machine.awaiting_adl,
            next_liquidation=machine.next_id,
            _ranked_stale=False,
        )
        old = MarketEngine.__new__(MarketEngine)
        old.__setstate__(pickle.loads(pickle.dumps(state)))
        assert old.liquidations == market.liquidations
        assert old.next_liquidation == market.next_liquidation
        assert len(old.index) == len(market.index)


def test_a_working_liquidation_is_required_for_book_fills() -> None:
    market = MarketEngine(btc_usdt_spec())
    with pytest.raises(Rejected) as info:
        market.liquidation_done(LiquidationDone(market="BTC-USDT", liquidation_id=1))
    assert info.value.field == "liquidation_id"
