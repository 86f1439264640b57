"""The record hand-off without tasks: same outcome as faust's ``wait_first``, fewer tasks."""

from __future__ import annotations

import asyncio
from typing import Any

from topologies.drain import hand_over, start_hand_over


class FakeConsumer:
    """``suspend_flow`` and a ``wait_first`` with mode's semantics (first to finish wins, others cancelled)."""

    def __init__(self) -> None:
        self.suspend_flow = asyncio.Event()
        self.waits = 0

    async def wait_first(self, *aws: Any) -> None:
        self.waits += 1
        tasks = [asyncio.ensure_future(a) for a in aws]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in done:
            t.result()


async def test_a_hand_off_that_does_not_wait_runs_inline_without_wait_first() -> None:
    consumer, got = FakeConsumer(), []

    async def deliver(x: int) -> None:  # room in the buffer: never suspends
        got.append(x)

    before = len(asyncio.all_tasks())
    await hand_over(consumer, deliver(1))
    assert got == [1] and consumer.waits == 0 and len(asyncio.all_tasks()) == before


async def test_a_hand_off_that_waits_resumes_where_it_stopped_with_the_result() -> None:
    consumer, got = FakeConsumer(), []
    room: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def deliver() -> None:
        got.append("started")
        got.append(await room)  # a full buffer: waits for room
        await asyncio.sleep(0)
        got.append("done")

    asyncio.get_running_loop().call_later(0.01, room.set_result, "room")
    await hand_over(consumer, deliver())
    assert got == ["started", "room", "done"] and consumer.waits == 1


async def test_a_waiting_hand_off_is_abandoned_when_the_flow_is_suspended() -> None:
    consumer, got = FakeConsumer(), []

    async def deliver() -> None:
        try:
            await asyncio.Event().wait()  # never room
        except asyncio.CancelledError:
            got.append("cancelled")
            raise

    asyncio.get_running_loop().call_later(0.01, consumer.suspend_flow.set)
    await hand_over(consumer, deliver())
    await asyncio.sleep(0)
    assert got == ["cancelled"]


async def test_with_the_flow_suspended_the_hand_off_takes_faust_s_path() -> None:
    consumer, got = FakeConsumer(), []
    consumer.suspend_flow.set()

    async def deliver() -> None:
        got.append(1)

    await hand_over(consumer, deliver())
    assert consumer.waits == 1 and got == [1]


async def test_an_error_in_the_hand_off_reaches_the_loop() -> None:
    consumer = FakeConsumer()

    async def deliver() -> None:
        raise ValueError("bad record")

    try:
        await hand_over(consumer, deliver())
    except ValueError as exc:
        assert str(exc) == "bad record"
    else:
        raise AssertionError("the error was swallowed")


async def test_started_inline_a_hand_off_that_does_not_wait_leaves_nothing_to_await() -> None:
    consumer, got = FakeConsumer(), []

    async def deliver() -> None:
        got.append(1)

    assert start_hand_over(consumer, deliver()) is None and got == [1] and consumer.waits == 0


async def test_started_inline_a_hand_off_that_waits_leaves_faust_s_wait_to_await() -> None:
    consumer, got = FakeConsumer(), []
    room: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def deliver() -> None:
        got.append(await room)

    waiting = start_hand_over(consumer, deliver())
    assert waiting is not None and got == [] and consumer.waits == 0
    room.set_result("room")
    await waiting
    assert got == ["room"] and consumer.waits == 1


async def test_started_inline_with_the_flow_suspended_nothing_runs_before_faust_s_wait() -> None:
    consumer, got = FakeConsumer(), []
    consumer.suspend_flow.set()

    async def deliver() -> None:
        got.append(1)

    waiting = start_hand_over(consumer, deliver())
    assert waiting is not None and got == []
    await waiting
    assert got == [1] and consumer.waits == 1
