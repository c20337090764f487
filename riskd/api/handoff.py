"""The wire between the ingest front-end process and the engine process.

A Unix socket pair carries length-prefixed frames (:func:`frame`,
:class:`FrameReader`), each one ``marshal`` of a tuple whose first item says
what it is (:class:`Op`).  The hot path — a batch's decoded updates, its
result — is plain tuples: marshal is the cheapest encoding that still yields
core inputs on the other side (``python -m benchmarks.handoff``), and it
carries no code, unlike pickle.  Control messages (the config at start, the
access policy after a reload) are pickled inside a frame: rare, and from the
engine to the front end only, which is the engine's own child.

Everything here is pure (no I/O): the front end (:mod:`riskd.api.frontend`)
and the engine's side (:mod:`riskd.api.frontend_link`) turn objects into
tuples and back, so the front end raises or returns exactly what the
in-process path would have: a :class:`~riskd.actors.sequencer.BatchResult`
or :class:`~riskd.actors.sequencer.SequenceError`, a
:class:`~riskd.actors.sequencer.Resume`, an
:class:`~riskd.actors.sequencer.OrderCheck`, or the error (``Rejected``,
``OrderRefused``, ``Unavailable``, ``SequenceError``) that refused it.
"""

from __future__ import annotations

import dataclasses
import marshal
import operator
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

from riskd.actors.sequencer import BatchResult, OrderCheck, Resume, SequenceError, Update
from riskd.api.bridge import Unavailable
from riskd.core import OrderRefused, Refusal, Rejected
from riskd.core.errors import Code
from riskd.core.events import CheckOrder
from riskd.core.inputs import KINDS

__all__ = [
    "Op",
    "FrameReader",
    "FrameTooLarge",
    "frame",
    "pack",
    "unpack",
    "marshal_updates",
    "unmarshal_updates",
    "marshal_check",
    "unmarshal_check",
    "marshal_error",
    "unmarshal_error",
    "marshal_batch",
    "unmarshal_batch",
    "marshal_resume",
    "unmarshal_resume",
    "marshal_order_check",
    "unmarshal_order_check",
    "Remote",
]

#: Frame header: the payload's length, big-endian.
_HEADER = struct.Struct("!I")
#: A frame longer than this is a broken peer, not a message (a 4 MiB gRPC
#: message of updates marshals to well under this).
MAX_FRAME_BYTES = 64 * 1024 * 1024


class Op:
    """What a frame is: its tuple's first item (plain ints: marshal takes no enums)."""

    # engine → front end
    CONFIG: Final = 1  # (CONFIG, pickled (Config, listen address, log level))
    RESULT: Final = 2  # (RESULT, request id, value)
    ERROR: Final = 3  # (ERROR, request id, error)
    ACCESS: Final = 4  # (ACCESS, pickled Policy): after SIGHUP
    DRAIN: Final = 5  # (DRAIN,): stop reading, ack what is in flight, then DRAINED
    # front end → engine
    STARTED: Final = 10  # (STARTED, bound port)
    FAILED: Final = 11  # (FAILED, one-line reason): could not start
    OPEN: Final = 12  # (OPEN, id, gateway, epoch): Sequencer.open_session
    INGEST: Final = 13  # (INGEST, id, urgent, gateway, epoch, updates, lane, weight)
    FLUSH: Final = 14  # (FLUSH, id): Sequencer.flushed
    CHECK: Final = 15  # (CHECK, id, gateway, check): Sequencer.check_orders
    METRICS: Final = 16  # (METRICS, streams_open, paced_s, throttled, denied, denied_unrecorded)
    DRAINED: Final = 17  # (DRAINED,)


class FrameTooLarge(ValueError):
    """A frame header announcing more than :data:`MAX_FRAME_BYTES`: the peer is broken."""


def frame(message: tuple[Any, ...]) -> bytes:
    """One message, marshalled and length-prefixed."""
    body = marshal.dumps(message)
    return _HEADER.pack(len(body)) + body


def pack(messages: Sequence[tuple[Any, ...]]) -> bytes:
    """Several messages as one write (read back as several frames)."""
    return b"".join(map(frame, messages))


class FrameReader:
    """Bytes in as they arrive, whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        """The messages ``data`` completes, in order (none while a frame is partial)."""
        buf = self._buffer
        buf += data
        out: list[tuple[Any, ...]] = []
        at, end = 0, len(buf)
        size = _HEADER.size
        while end - at >= size:
            (n,) = _HEADER.unpack_from(buf, at)
            if n > MAX_FRAME_BYTES:
                raise FrameTooLarge(f"a frame of {n} bytes (at most {MAX_FRAME_BYTES})")
            if end - at - size < n:
                break
            out.append(unpack(bytes(buf[at + size : at + size + n])))
            at += size + n
        del buf[:at]
        return out


def unpack(body: bytes) -> tuple[Any, ...]:
    try:
        message = marshal.loads(body)
    except (EOFError, TypeError, ValueError) as e:
        raise ValueError(f"a frame that does not unmarshal: {e}") from None
    if not isinstance(message, tuple) or not message or not isinstance(message[0], int):
        raise ValueError("a frame that is no message")
    return message


# --- inputs -----------------------------------------------------------------

#: Per kind index: the input class (its compiled ``__init__`` rebuilds it).
_CLASSES: tuple[type[Any], ...] = tuple(KINDS)
#: Per input class: its kind index and a getter of its fields, in ``__init__``'s order.
_GETTERS: dict[type[Any], tuple[int, Callable[[Any], tuple[Any, ...]]]] = {}
for _i, _cls in enumerate(_CLASSES):
    _names = tuple(f.name for f in dataclasses.fields(_cls))
    _get = operator.attrgetter(*_names)
    # attrgetter of one name returns the value, not a 1-tuple: every input has >= 2.
    assert len(_names) >= 2
    _GETTERS[_cls] = (_i, _get)


def marshal_updates(updates: Sequence[Update]) -> list[tuple[Any, ...]]:
    """A batch's decoded updates as plain tuples: ``(seq, kind index, fields)``,
    or ``(seq, -1, error)`` for one refused while decoding.  The fields nested,
    not spread: the engine passes them to the class as they are (measured: a
    third of the unmarshalling cost, slicing rows, gone)."""
    out: list[tuple[Any, ...]] = []
    append = out.append
    getters = _GETTERS
    for seq, x in updates:
        g = getters.get(type(x))
        if g is not None:
            append((seq, g[0], g[1](x)))
        else:
            assert isinstance(x, Rejected)
            append((seq, -1, marshal_error(x)))
    return out


def unmarshal_updates(rows: Sequence[Sequence[Any]]) -> list[Update]:
    """:func:`marshal_updates` undone: each input rebuilt by its class."""
    classes = _CLASSES
    out: list[Update] = []
    append = out.append
    for row in rows:
        k = row[1]
        if k >= 0:
            append((row[0], classes[k](*row[2])))
        else:
            refused = unmarshal_error(row[2])
            if not isinstance(refused, Rejected):
                raise ValueError(f"an update refused with {refused!r}")
            append((row[0], refused))
    return out


def marshal_check(check: CheckOrder) -> tuple[Any, ...]:
    fields: tuple[Any, ...] = marshal_updates([(0, check)])[0][2]
    return fields


def unmarshal_check(fields: Sequence[Any]) -> CheckOrder:
    return CheckOrder(*fields)


# --- errors -----------------------------------------------------------------


class Remote(RuntimeError):
    """An error the engine met that has no wire form: the front end reports it
    as an internal error, as the in-process path would."""


def marshal_error(e: BaseException) -> tuple[Any, ...]:
    """An error as a tuple whose first item names its class."""
    if isinstance(e, OrderRefused):
        return ("O", e.reason.value, e.field, e.message)
    if isinstance(e, Rejected):
        return ("R", e.code.value, e.field, e.message)
    if isinstance(e, SequenceError):
        return ("S", e.code.value, e.field, e.message, e.expected)
    if isinstance(e, Unavailable):
        return ("U", str(e))
    return ("X", repr(e))


def unmarshal_error(t: Sequence[Any]) -> BaseException:
    tag = t[0]
    if tag == "O":
        return OrderRefused(Refusal(t[1]), t[2], t[3])
    if tag == "R":
        return Rejected(Code(t[1]), t[2], t[3])
    if tag == "S":
        return SequenceError(Code(t[1]), t[2], t[3], t[4])
    if tag == "U":
        return Unavailable(t[1])
    if tag == "X":
        return Remote(t[1])
    raise ValueError(f"unknown error tag {tag!r}")


# --- results ----------------------------------------------------------------


def marshal_batch(value: BatchResult | SequenceError) -> tuple[Any, ...]:
    """An ingest batch's answer: its result, or the SequenceError that refused it."""
    if isinstance(value, SequenceError):
        return ("S", marshal_error(value))
    rejections = [(seq, *marshal_error(r)) for seq, r in value.rejections]
    return ("B", value.acked, rejections, value.duplicates, [tuple(r) for r in value.repeated])


def unmarshal_batch(t: Sequence[Any]) -> BatchResult | SequenceError:
    if t[0] == "S":
        e = unmarshal_error(t[1])
        if not isinstance(e, SequenceError):
            raise ValueError(f"a batch answered with {e!r}")
        return e
    rejections: list[tuple[int, Rejected]] = []
    for seq, *err in t[2]:
        r = unmarshal_error(err)
        if not isinstance(r, Rejected):
            raise ValueError(f"a rejection that is {r!r}")
        rejections.append((seq, r))
    return BatchResult(t[1], rejections, t[3], [tuple(r) for r in t[4]])


def marshal_resume(r: Resume) -> tuple[Any, ...]:
    return (r.acked, r.rejections_from, [tuple(x) for x in r.rejections], r.epoch)


def unmarshal_resume(t: Sequence[Any]) -> Resume:
    return Resume(t[0], t[1], [tuple(x) for x in t[2]], t[3])


def marshal_order_check(c: OrderCheck) -> tuple[Any, ...]:
    refused = None if c.refused is None else marshal_error(c.refused)
    return (refused, c.reserved, c.available)


def unmarshal_order_check(t: Sequence[Any]) -> OrderCheck:
    refused = None if t[0] is None else unmarshal_error(t[0])
    if refused is not None and not isinstance(refused, Rejected):
        raise ValueError(f"an order check refused with {refused!r}")
    return OrderCheck(refused, t[1], t[2])
