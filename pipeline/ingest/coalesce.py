"""Several requests' pings of one key into one Kafka record, within a short linger.

Phones in live mode post one ping per request; one record per request would
make the stream side pay faust's per-record cost per ping and the producer pay
its per-record cost per request. Requests arriving within ``linger_s`` share a
flush: their pings are grouped per key into records of at most ``max_pings``,
produced together, and every request waits for the acknowledgement of the
whole flush — 202 still means Kafka holds the request's pings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pipeline import pings

Send = Callable[[list[tuple[bytes, bytes]]], Awaitable[None]]


class Coalescer:
    def __init__(
        self,
        send: Send,
        linger_s: float = 0.004,
        max_pings: int = pings.MAX_BATCH,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.send = send
        self.linger_s = linger_s
        self.max_pings = max_pings
        self.clock = clock
        self._pending: dict[str, list[pings.Ping]] = {}
        self._done: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.flushes = 0
        self.records = 0

    def submit(self, groups: dict[str, list[pings.Ping]]) -> asyncio.Future[None]:
        """Queue pings (already grouped by key); the future resolves when Kafka acked them."""
        if self._done is None:
            loop = asyncio.get_running_loop()
            self._done = loop.create_future()
            loop.call_later(self.linger_s, self._flush)
        pending = self._pending
        for key, chunk in groups.items():
            cur = pending.get(key)
            if cur is None:
                pending[key] = list(chunk)
            else:
                cur.extend(chunk)
        return self._done

    def _flush(self) -> None:
        groups, done = self._pending, self._done
        self._pending, self._done = {}, None
        if done is None:
            return
        task = asyncio.ensure_future(self._produce(groups, done))
        self._tasks.add(task)  # keep a reference until done (the loop holds only weak ones)
        task.add_done_callback(self._tasks.discard)

    async def _produce(self, groups: dict[str, list[pings.Ping]], done: asyncio.Future[None]) -> None:
        import time

        now = self.clock() if self.clock else time.time()
        records = [
            (key.encode(), pings.encode_record(key, chunk[i : i + self.max_pings], now))
            for key, chunk in groups.items()
            for i in range(0, len(chunk), self.max_pings)
        ]
        self.flushes += 1
        self.records += len(records)
        try:
            await self.send(records)
        except BaseException as exc:  # every waiting request must hear of it
            if not done.done():
                done.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if not done.done():
            done.set_result(None)
