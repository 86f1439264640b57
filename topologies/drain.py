"""faust's record hand-off loop without four tasks per record.

faust-streaming 0.15.3 hands every fetched record to the agents' buffers with
``await self.wait_first(callback(message), self.suspend_flow.wait())``, so that a
hand-off blocked on a full buffer is abandoned when a rebalance suspends the flow.
``mode``'s ``wait_first`` makes four tasks for that (the callback, the suspend
event, the service's stopped and crashed events), waits on them and cancels three:
per record, more than the hand-off itself, and ~3 % of a busy worker.

Nearly every hand-off finishes without waiting (there is room in the buffer). So
:func:`drain_messages` starts the callback by hand: done at once, it is done; and
only one that has to wait goes through ``wait_first``, continued from where it
stopped (:class:`Continue`), with faust's semantics. With the flow already
suspended, the record takes faust's path unchanged.

The loop is faust's ``Consumer._drain_messages`` otherwise (pinned version).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING


class Continue:
    """The rest of a coroutine started by hand, now waiting on ``pending`` (what it yielded).

    Awaiting it drives the coroutine on exactly as a task would have (``yield from``
    semantics): results are sent in, exceptions (a cancellation) are thrown in.
    """

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, step = self.coro, self.pending
        while True:
            try:
                sent = yield step
            except BaseException as exc:  # handed to the coroutine, as a task would
                try:
                    step = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    step = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def start_hand_over(consumer: Any, coro: Coroutine[Any, Any, Any]) -> Awaitable[Any] | None:
    """Run ``coro`` as far as it goes without waiting: ``None`` when it finished, else what to await.

    What to await is ``consumer.wait_first(<the rest of coro>, consumer.suspend_flow.wait())``.
    A plain function, not a coroutine: a hand-off that does not wait costs no coroutine of its own.
    """
    if consumer.suspend_flow.is_set():
        return consumer.wait_first(coro, consumer.suspend_flow.wait())  # type: ignore[no-any-return]
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    return consumer.wait_first(Continue(coro, pending), consumer.suspend_flow.wait())  # type: ignore[no-any-return]


async def hand_over(consumer: Any, coro: Coroutine[Any, Any, Any]) -> None:
    """``await consumer.wait_first(coro, consumer.suspend_flow.wait())``, without tasks when ``coro`` does not wait."""
    waiting = start_hand_over(consumer, coro)
    if waiting is not None:
        await waiting


async def drain_messages(consumer: Any, fetcher: Any) -> None:  # pragma: no cover - the worker's fetch loop
    """faust's ``Consumer._drain_messages`` (0.15.3) with :func:`hand_over` for ``wait_first``."""
    callback = consumer.callback
    getmany = consumer.getmany
    consumer_should_stop = consumer._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = consumer._read_offset.__getitem__
    set_read_offset = consumer._read_offset.__setitem__
    set_flag, unset_flag = consumer.diag.set_flag, consumer.diag.unset_flag
    commit_every = consumer._commit_every
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    yield_every = 100
    num_since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await consumer.sleep(0)  # getmany may loop without ever releasing the event loop
            if not consumer.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await asyncio.sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await consumer._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and consumer._n_acked >= commit_every:
                            consumer._n_acked = 0
                            await consumer.commit()
                        waiting = start_hand_over(consumer, callback(message))  # hand_over, inlined
                        if waiting is not None:
                            await waiting
                        set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            consumer.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            consumer.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        consumer.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)
