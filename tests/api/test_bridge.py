"""The asyncio → trio bridge (riskd/api/bridge.py): grouped posts (Portal.post_grouped)
and unary writes (Portal.write).

Posts that cross in one wake-up of trio reach the actor as one call when they
are consecutive, for the same function, in the same lane and within
MAX_GROUP_WEIGHT; each poster still hears its own answer on the asyncio loop.
The wake-up is driven by hand here, so what crosses together is decided by
the test, not by thread timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio
import trio.testing

from riskd.actors.actor import Actor
from riskd.actors.journal import Durable
from riskd.api.bridge import MAX_GROUP_WEIGHT, Portal


class Doubler(Actor):
    """Answers each argument doubled, one Durable each, and records its calls."""

    def __init__(self) -> None:
        super().__init__("doubler", 16)
        self.calls: list[list[int]] = []

    async def many(self, args: list[int]) -> list[Durable[int]]:
        self.calls.append(list(args))
        return [Durable.ready(2 * a) for a in args]

    async def other(self, args: list[int]) -> list[Durable[int]]:
        self.calls.append([-a for a in args])
        return [Durable.ready(-a) for a in args]


class HandToken:
    """A TrioToken stand-in: keeps the wake-up until the test runs it."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def run_sync_soon(self, fn: Callable[[], None]) -> None:
        self.pending.append(fn)

    def cross(self) -> None:
        while self.pending:
            self.pending.pop(0)()


@contextmanager
def asyncio_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@asynccontextmanager
async def portal_on(
    loop: asyncio.AbstractEventLoop,
) -> AsyncIterator[tuple[Portal, HandToken, Doubler]]:
    token = HandToken()
    async with trio.open_nursery() as nursery:
        actor = Doubler()
        await nursery.start(actor.run)
        portal = Portal(token, nursery, 8)  # type: ignore[arg-type]  # only run_sync_soon is used
        portal._loop = loop  # posts come from that loop's thread in the daemon
        yield portal, token, actor
        nursery.cancel_scope.cancel()


async def answers(
    posts: list[tuple[bool, str, int]],
) -> tuple[list[list[int]], dict[int, tuple[object, BaseException | None]]]:
    """Post ``(urgent, fn name, weight)`` with arguments 0, 1, ...; cross once;
    the actor's calls and every poster's answer."""
    got: dict[int, tuple[object, BaseException | None]] = {}
    all_in = trio.Event()
    trio_token = trio.lowlevel.current_trio_token()
    with asyncio_thread() as loop:
        async with portal_on(loop) as (portal, token, actor):

            def deliver(i: int) -> Callable[[object, BaseException | None], None]:
                def answer(value: object, error: BaseException | None) -> None:  # on asyncio
                    got[i] = (value, error)
                    if len(got) == len(posts):
                        trio_token.run_sync_soon(all_in.set)

                return answer

            for i, (urgent, name, weight) in enumerate(posts):
                fn = actor.many if name == "many" else actor.other
                portal.post_grouped(actor, deliver(i), urgent, fn, i, weight)
            token.cross()
            with trio.fail_after(10):
                await all_in.wait()
            return actor.calls, got


async def test_posts_that_cross_together_are_one_call_and_each_hears_its_own_answer() -> None:
    calls, got = await answers([(False, "many", 1)] * 5)
    assert calls == [[0, 1, 2, 3, 4]]
    assert got == {i: (2 * i, None) for i in range(5)}


async def test_a_group_never_mixes_lanes_or_functions_and_keeps_the_order() -> None:
    calls, got = await answers(
        [
            (False, "many", 1),
            (False, "many", 1),
            (True, "many", 1),  # the urgent lane: its own group
            (False, "many", 1),
            (False, "other", 1),
            (False, "many", 1),
        ]
    )
    assert [c for c in calls if c != [2]] == [[0, 1], [3], [-4], [5]] and [2] in calls
    assert got[2] == (4, None) and got[4] == (-4, None) and got[5] == (10, None)


async def test_a_group_stops_at_its_weight() -> None:
    half = MAX_GROUP_WEIGHT // 2
    calls, _ = await answers([(False, "many", half)] * 5 + [(False, "many", 10 * MAX_GROUP_WEIGHT)])
    assert calls == [[0, 1], [2, 3], [4, 5]]  # a heavy one joins the group it finds open


class Gated(Actor):
    """One message of room; ``hold`` keeps the actor busy until ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__("gated", 1)
        self.gate = trio.Event()
        self.written = trio.Event()
        self.record: Durable[int] = Durable(0)

    async def hold(self) -> None:
        await self.gate.wait()

    async def write(self, x: int) -> Durable[int]:
        self.record = Durable(2 * x)
        self.written.set()
        return self.record


class SignalToken(HandToken):
    """A HandToken that says (across threads) when a wake-up is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.woken = threading.Event()

    def run_sync_soon(self, fn: Callable[[], None]) -> None:
        super().run_sync_soon(fn)
        self.woken.set()


async def test_a_write_waits_for_room_and_answers_once_durable() -> None:
    """A unary write finding the mailbox full waits (as ``Actor.call`` does), not
    UNAVAILABLE; its answer comes only once its record is released."""
    token = SignalToken()
    with asyncio_thread() as loop, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            actor = Gated()
            await nursery.start(actor.run)
            portal = Portal(token, nursery, 8)  # type: ignore[arg-type]  # run_sync_soon only
            nursery.start_soon(actor.call, actor.hold)  # busy ...
            await trio.testing.wait_all_tasks_blocked()
            await actor.cast(actor.hold)  # ... and its one slot taken
            answer = asyncio.run_coroutine_threadsafe(portal.write(actor, actor.write, 21), loop)
            assert await trio.to_thread.run_sync(token.woken.wait, 10)
            token.cross()  # the mailbox is full: the write waits for room
            actor.gate.set()
            await actor.written.wait()
            await trio.testing.wait_all_tasks_blocked()
            ping = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
            await trio.to_thread.run_sync(ping.result, 10)  # anything sent back has landed
            assert not answer.done()  # written, not durable yet
            actor.record._release()
            assert await trio.to_thread.run_sync(answer.result, 10) == 42
            nursery.cancel_scope.cancel()


async def test_unary_writes_that_cross_together_are_one_call() -> None:
    """Portal.write_grouped: grouped as post_grouped, each caller awaits its own value."""
    token = SignalToken()
    with asyncio_thread() as loop, trio.fail_after(10):
        async with portal_on(loop) as (portal, _, actor):
            portal.token = token  # type: ignore[assignment]  # only run_sync_soon is used

            async def both() -> list[int]:
                return list(
                    await asyncio.gather(
                        portal.write_grouped(actor, actor.many, 1),
                        portal.write_grouped(actor, actor.many, 2),
                    )
                )

            answer = asyncio.run_coroutine_threadsafe(both(), loop)
            assert await trio.to_thread.run_sync(token.woken.wait, 10)
            ping = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
            await trio.to_thread.run_sync(ping.result, 10)  # both posted
            token.cross()
            assert await trio.to_thread.run_sync(answer.result, 10) == [2, 4]
            assert actor.calls == [[1, 2]]
