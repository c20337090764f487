"""The actor's urgent lane: urgent messages run before what waits in the mailbox."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from riskd.actors.actor import Actor


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
