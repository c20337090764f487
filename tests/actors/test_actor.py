"""The actor's urgent lane: urgent messages run before what waits in the mailbox."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from riskd.actors.actor import Actor
from riskd.core import Rejected


async def test_urgent_messages_overtake_the_mailbox_but_not_each_other() -> None:
    actor = Actor("test", capacity=8)
    ran: list[str] = []
    gate = trio.Event()
    done: list[tuple[object, BaseException | None]] = []

    def note(v: object, e: BaseException | None) -> None:
        done.append((v, e))

    async def blocker() -> str:
        await gate.wait()
        ran.append("blocker")
        return "blocker"

    def record(name: str) -> str:
        ran.append(name)
        return name

    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        actor.post(blocker, (), note)
        await trio.testing.wait_all_tasks_blocked()
        for name in ("n1", "n2"):
            actor.post(record, (name,), note)
        actor.post(record, ("u1",), note, urgent=True)
        actor.post(record, ("u2",), note, urgent=True)
        assert actor.depth == 4
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert ran == ["blocker", "u1", "u2", "n1", "n2"]
        # An idle actor is woken by an urgent message alone.
        actor.post(record, ("u3",), note, urgent=True)
        await trio.testing.wait_all_tasks_blocked()
        assert ran[-1] == "u3" and actor.depth == 0
        assert [v for v, _ in done] == ["blocker", "u1", "u2", "n1", "n2", "u3"]
        nursery.cancel_scope.cancel()


async def test_the_urgent_lane_is_bounded() -> None:
    actor = Actor("test", capacity=2)
    actor.post(print, (), lambda v, e: None, urgent=True)
    actor.post(print, (), lambda v, e: None, urgent=True)
    with pytest.raises(trio.WouldBlock):
        actor.post(print, (), lambda v, e: None, urgent=True)


async def test_a_stopped_actor_answers_waiting_and_later_calls_instead_of_hanging() -> None:
    """After its task ends (here: a bug in a handler), no caller waits forever."""
    from riskd.actors.actor import ActorStopped

    actor = Actor("test", capacity=8)
    outcomes: list[str] = []
    posted: list[BaseException | None] = []

    gate = trio.Event()

    async def bug() -> None:
        await gate.wait()
        raise RuntimeError("a bug")

    async def caller(name: str) -> None:
        try:
            await actor.call(print)
        except ActorStopped:
            outcomes.append(name)

    with pytest.raises(ExceptionGroup):
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            actor.post(bug, (), lambda v, e: posted.append(e))
            actor.post(print, (), lambda v, e: posted.append(e))  # queued behind the bug
            nursery.start_soon(caller, "queued")
            await trio.testing.wait_all_tasks_blocked()  # the caller waits for its turn
            gate.set()
    # The failed, the queued and the waiting calls were answered, not dropped.
    assert [type(e) for e in posted] == [ActorStopped, ActorStopped]
    assert outcomes == ["queued"]
    with pytest.raises(ActorStopped):
        await actor.call(print)
    with pytest.raises(ActorStopped):
        await actor.cast(print)
    late: list[BaseException | None] = []
    actor.post(print, (), lambda v, e: late.append(e))
    assert [type(e) for e in late] == [ActorStopped]


async def test_a_call_queues_at_once_with_room_and_wait_for_room_when_full() -> None:
    actor = Actor("test", capacity=1)
    gate = trio.Event()
    ran: list[int] = []

    async def blocker() -> None:
        await gate.wait()

    def record(n: int) -> int:
        ran.append(n)
        return n

    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        nursery.start_soon(actor.call, blocker)
        await trio.testing.wait_all_tasks_blocked()  # the actor runs blocker
        nursery.start_soon(actor.call, record, 1)  # fills the mailbox
        await trio.testing.wait_all_tasks_blocked()
        assert actor.depth == 1
        nursery.start_soon(actor.call, record, 2)  # waits for room
        await trio.testing.wait_all_tasks_blocked()
        assert actor.depth == 1
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert ran == [1, 2]
        nursery.cancel_scope.cancel()


async def test_a_cancelled_caller_queues_nothing() -> None:
    actor = Actor("test", capacity=8)
    ran: list[int] = []

    def record(n: int) -> int:
        ran.append(n)
        return n

    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        with trio.CancelScope() as scope:
            scope.cancel()
            await actor.call(record, 1)
        assert scope.cancelled_caught
        assert await actor.call(record, 2) == 2
        assert ran == [2]
        nursery.cancel_scope.cancel()


async def test_call_here_runs_in_the_callers_task_only_when_the_actor_is_idle() -> None:
    """Idle: at once, in the caller's task.  A message ahead of it (queued, or
    handed to the actor's task and not yet run, or urgent): as ``call``, after it."""
    actor = Actor("test", capacity=8)
    ran: list[tuple[str, bool]] = []
    gate = trio.Event()
    me = trio.lowlevel.current_task

    def record(name: str, caller: trio.lowlevel.Task) -> str:
        ran.append((name, me() is caller))
        return name

    async def blocker() -> None:
        await gate.wait()
        ran.append(("blocker", False))

    def refuse() -> None:
        raise Rejected.invalid("x", "no")

    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await trio.testing.wait_all_tasks_blocked()
        assert await actor.call_here(record, "idle", me()) == "idle"
        with pytest.raises(Rejected):  # refused: raised to the caller, as call does
            await actor.call_here(refuse)
        # Handed to the actor's task, which has not run it yet: it goes first.
        actor.post(record, ("handed", me()), lambda v, e: None)
        await actor.call_here(record, "after handed", me())
        # Queued behind a running handler: it goes first too.
        actor.post(blocker, (), lambda v, e: None)
        actor.post(record, ("queued", me()), lambda v, e: None)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(actor.call_here, record, "after queued", me())
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert ran == [
            ("idle", True),
            ("handed", False),
            ("after handed", False),
            ("blocker", False),
            ("queued", False),
            ("after queued", False),
        ]
        nursery.cancel_scope.cancel()


async def test_a_message_arriving_while_call_here_awaits_runs_after_it() -> None:
    """One handler at a time: the actor's task waits for the lent call to return."""
    actor = Actor("test", capacity=8)
    other = Actor("other", capacity=8)
    ran: list[str] = []
    gate = trio.Event()

    async def lent() -> str:
        ran.append("lent starts")
        await other.call(gate.wait)  # awaits another actor meanwhile
        ran.append("lent ends")
        return "lent"

    def record(name: str) -> str:
        ran.append(name)
        return name

    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await nursery.start(other.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(actor.call_here, lent)
        await trio.testing.wait_all_tasks_blocked()
        actor.post(record, ("posted",), lambda v, e: None)
        actor.post(record, ("urgent",), lambda v, e: None, urgent=True)
        nursery.start_soon(actor.call_here, record, "second call_here")
        await trio.testing.wait_all_tasks_blocked()
        assert ran == ["lent starts"]
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert ran == ["lent starts", "lent ends", "urgent", "posted", "second call_here"]
        nursery.cancel_scope.cancel()
