"""The wire between the ingest front end and the engine: every shape reads back as sent."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from riskd.actors.sequencer import BatchResult, OrderCheck, Resume, SequenceError
from riskd.api import handoff
from riskd.api.bridge import Unavailable
from riskd.api.handoff import Op
from riskd.core import KINDS, OrderRefused, Refusal, Rejected
from riskd.core.errors import Code
from riskd.core.events import CheckOrder

ints = st.integers(min_value=-(2**70), max_value=2**70)  # exact beyond int64, both ways
text = st.text(max_size=12)
_BY_TYPE = {"int": ints, "str": text, "bool": st.booleans()}


def _kind(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Any value of one input kind, every field set (by its declared type)."""
    return st.builds(
        cls, *(_BY_TYPE[getattr(f.type, "__name__", f.type)] for f in dataclasses.fields(cls))
    )


_inputs = st.one_of(*(_kind(cls) for cls in KINDS))
_rejected = st.builds(Rejected, st.sampled_from(list(Code)), text, text)
_refused = st.builds(OrderRefused, st.sampled_from(list(Refusal)), text, text)


def _same(a: BaseException, b: BaseException) -> None:
    assert type(a) is type(b)
    assert vars(a) == vars(b)
    assert str(a) == str(b)


@given(st.lists(st.tuples(st.integers(1, 2**63), st.one_of(_inputs, _rejected)), max_size=12))
def test_every_input_kind_and_refusal_reads_back(updates: list[tuple[int, Any]]) -> None:
    rows = handoff.marshal_updates(updates)
    wire = handoff.frame((Op.INGEST, 1, False, "gw", 1, rows, "other", len(rows)))
    (message,) = handoff.FrameReader().feed(wire)
    back = handoff.unmarshal_updates(message[5])
    assert len(back) == len(updates)
    for (seq, x), (seq2, y) in zip(updates, back, strict=True):
        assert seq == seq2
        if isinstance(x, Rejected):
            _same(x, y)  # type: ignore[arg-type]
        else:
            assert type(y) is type(x) and y == x


def test_every_kind_is_covered() -> None:
    """Each input class gets its own index; a new kind needs nothing here."""
    fixed = {"int": -(2**64), "str": "BTC-USDT", "bool": True}
    for cls in KINDS:
        x = cls(*(fixed[getattr(f.type, "__name__", f.type)] for f in dataclasses.fields(cls)))
        ((seq, y),) = handoff.unmarshal_updates(handoff.marshal_updates([(7, x)]))
        assert seq == 7 and type(y) is cls and y == x


@given(st.one_of(_rejected, _refused))
def test_rejections_and_refusals_read_back(e: Rejected) -> None:
    _same(handoff.unmarshal_error(handoff.marshal_error(e)), e)


def test_other_errors_read_back() -> None:
    seq = SequenceError(Code.FAILED_PRECONDITION, "updates.sequence", "expected 3", 3)
    _same(handoff.unmarshal_error(handoff.marshal_error(seq)), seq)
    gone = Unavailable("the engine has stopped")
    _same(handoff.unmarshal_error(handoff.marshal_error(gone)), gone)
    other = handoff.unmarshal_error(handoff.marshal_error(KeyError("x")))
    assert isinstance(other, handoff.Remote) and "KeyError" in str(other)


@given(
    st.integers(0, 2**63),
    st.lists(st.tuples(st.integers(1, 2**63), st.one_of(_rejected, _refused)), max_size=4),
    st.integers(0, 4096),
    st.lists(
        st.tuples(st.integers(1, 9), st.integers(0, 9), text, text, text, text, text), max_size=3
    ),
)
def test_batch_results_read_back(
    acked: int, rejections: list[tuple[int, Rejected]], duplicates: int, repeated: list[Any]
) -> None:
    result = BatchResult(acked, rejections, duplicates, repeated)
    (message,) = handoff.FrameReader().feed(
        handoff.frame((Op.RESULT, 5, handoff.marshal_batch(result)))
    )
    back = handoff.unmarshal_batch(message[2])
    assert isinstance(back, BatchResult)
    assert (back.acked, back.duplicates, back.repeated) == (acked, duplicates, repeated)
    assert [s for s, _ in back.rejections] == [s for s, _ in rejections]
    for (_, a), (_, b) in zip(back.rejections, rejections, strict=True):
        _same(a, b)


def test_a_sequence_error_answers_a_batch() -> None:
    e = SequenceError(Code.FAILED_PRECONDITION, "updates.sequence", "gap: expected 1", 1)
    back = handoff.unmarshal_batch(handoff.marshal_batch(e))
    _same(back, e)


def test_resume_and_order_checks_read_back() -> None:
    kept = [(3, 0, "Fill", "INVALID_ARGUMENT", "updates[0].fill.price", "off tick", "")]
    resume = Resume(5, 3, kept, 9)
    assert handoff.unmarshal_resume(handoff.marshal_resume(resume)) == resume
    accepted = OrderCheck(None, 120, 880)
    assert handoff.unmarshal_order_check(handoff.marshal_order_check(accepted)) == accepted
    for refused in (
        OrderRefused(Refusal.INSUFFICIENT_BALANCE, "quantity", "needs 5, has 4"),
        Rejected.not_found("market", "no such market"),
    ):
        back = handoff.unmarshal_order_check(handoff.marshal_order_check(OrderCheck(refused, 0, 4)))
        assert (back.reserved, back.available) == (0, 4)
        assert back.refused is not None
        _same(back.refused, refused)


def test_a_check_order_reads_back() -> None:
    c = CheckOrder("BTC-USDT", 1, 2, 1, 5_000_000, 3, False, True, 10, 1_700_000_000_000)
    assert handoff.unmarshal_check(handoff.marshal_check(c)) == c


def test_frames_split_and_joined_anywhere() -> None:
    messages = [(Op.FLUSH, i) for i in range(5)] + [(Op.METRICS, 1, 0.5, 0, 0, 0)]
    wire = handoff.pack(messages)
    for step in (1, 3, 7, len(wire)):
        reader = handoff.FrameReader()
        got: list[tuple[Any, ...]] = []
        for at in range(0, len(wire), step):
            got += reader.feed(wire[at : at + step])
        assert got == messages


def test_a_broken_peer_is_refused() -> None:
    with pytest.raises(handoff.FrameTooLarge):
        handoff.FrameReader().feed(b"\xff\xff\xff\xff")
    assert handoff.FrameReader().feed(handoff.frame((Op.DRAIN,))[:4]) == []  # not whole yet
    with pytest.raises(ValueError):
        handoff.FrameReader().feed(handoff.frame(("not", "an", "op")))
