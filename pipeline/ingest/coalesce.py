"""The pings of concurrent requests, within a short linger, into few Kafka records per partition.

Phones in live mode post one ping per request; one record per request would make
the stream side pay faust's per-record cost per ping and the producer (and the
broker) pay their per-record and per-request costs per HTTP request. Requests
arriving within ``linger_s`` share a flush: their pings are grouped by the Kafka
*partition* their key lands on, put into records of at most ``max_pings``, produced
together, and every request waits for the acknowledgement of the whole flush — 202
still means Kafka holds the request's pings, and a failed flush fails every request
in it. A request hands in its pings already keyed and encoded (``wire.Group``: the
pings of one key as JSON fragments), so a record is joined from bytes.

Grouping per partition rather than per key: a city has hundreds of res-7 keys but a
topic has a handful of partitions, so per-key records would stay small. A record's
key is one of its pings' keys, so the default partitioner puts it on the partition
all of its pings' keys hash to — the partition each ping would have had alone. The
stream side therefore sees every ping in the partition of its own key (and computes
each ping's cell itself; the record's ``cell`` names only one of them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.partitioner import murmur2

from pipeline import pings
from pipeline.ingest.wire import Group, Keying, encode_record

# (records, timeout, each record's partition or None when the partition count is not known)
Send = Callable[[list[tuple[bytes, bytes]], float, list[int] | None], Awaitable[None]]
# (requests, pings, seconds from the flush's first request to its acknowledgement): once per acked flush
Acked = Callable[[int, int, float], None]

_PARTITION_CACHE_MAX = 200_000  # res-7 keys ever seen by one proxy: a country has ~10^5


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge in time (or the proxy is shutting down before it could)."""


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and aiokafka's) picks for ``key``."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


# H3 index (int) of a key → (key as a string, its partition): murmur2 in pure Python costs ~4 µs
# and the string form ~0.5 µs, while keys repeat (a city is a few hundred res-7 cells)
_keys: dict[int, tuple[str, int]] = {}
_keys_for = 0  # the partition count the cached partitions were computed for


def _key_and_partition(index: int, partitions: int) -> tuple[str, int]:
    global _keys_for
    if partitions != _keys_for or len(_keys) >= _PARTITION_CACHE_MAX:
        _keys.clear()
        _keys_for = partitions
    key = format(index, "x")
    hit = _keys[index] = (key, partition_of(key, partitions))
    return hit


# (record key, partition (-1: not known), the groups' fragments, pings)
Record = tuple[str, int, list[bytes], int]


def place(groups: list[Group], partitions: int | None, max_pings: int = pings.MAX_BATCH) -> list[Record]:
    """The records a flush's groups go out in: per partition, at most ``max_pings`` pings each.

    A record takes the groups of its partition in arrival order until the next one would pass
    ``max_pings``; it is keyed by its first group's key, so every ping of it has a key hashing to
    the record's partition. With ``partitions`` unknown (None or 0: no metadata yet), records are
    per key, as the stream side needs at the least. A group never holds more than ``max_pings``
    (``wire.Keying``), and pings keep their arrival order within a partition.
    """
    open_: dict[int, list[Any]] = {}  # partition (or key) → the record being filled
    out: list[list[Any]] = []
    if partitions:
        cache = _keys if partitions == _keys_for else {}
        for index, count, fragment in groups:
            hit = cache.get(index)
            if hit is None:
                hit = _key_and_partition(index, partitions)
                cache = _keys
            rec = open_.get(hit[1])
            if rec is None or rec[3] + count > max_pings:
                rec = open_[hit[1]] = [hit[0], hit[1], [fragment], count]
                out.append(rec)
            else:
                rec[2].append(fragment)
                rec[3] += count
    else:
        for index, count, fragment in groups:
            rec = open_.get(index)
            if rec is None or rec[3] + count > max_pings:
                rec = open_[index] = [format(index, "x"), -1, [fragment], count]
                out.append(rec)
            else:
                rec[2].append(fragment)
                rec[3] += count
    return [(key, part, fragments, count) for key, part, fragments, count in out]


class Coalescer:
    """Collects validated pings from concurrent requests and produces them per flush.

    ``send(records, timeout)`` produces ``(key, value)`` records and raises when Kafka did not
    take them all within ``timeout`` seconds; ``partitions`` says how many partitions the topic
    has now (None when the producer has no metadata for it). A request hears its answer at
    most ``timeout_s`` after the first request of its flush arrived (plus scheduling delays):
    waiting behind a slow flush eats into its own flush's timeout.
    """

    def __init__(
        self,
        send: Send,
        partitions: Callable[[], int | None] = lambda: None,
        *,
        key_res: int = 7,
        cell_res: int = 9,
        linger_s: float = 0.003,
        timeout_s: float = 0.9,
        max_pings: int = pings.MAX_BATCH,
        clock: Callable[[], float] = time.time,
        max_in_flight: int = 1,
        on_acked: Acked | None = None,
    ) -> None:
        self.send = send
        # the acknowledged requests' metrics, told once per flush instead of by each request
        self.on_acked = on_acked
        self.max_in_flight = max_in_flight  # flushes awaiting their ack at once (one per producer)
        self.partitions = partitions
        # what the requests' groups are keyed and capped by (the handler scans bodies with it)
        self.keying = Keying(key_res, cell_res, max_pings)
        self.linger_s = linger_s
        self.timeout_s = timeout_s
        self.max_pings = max_pings
        self.clock = clock
        self._pending: list[Group] = []
        self._requests = 0  # submits in the pending flush
        self._pings = 0  # pings in the pending flush
        self._done: asyncio.Future[None] | None = None
        self._deadline = 0.0  # loop time by which the pending requests must have their answer
        self._handle: asyncio.TimerHandle | None = None
        self._due = False  # the linger is over but max_in_flight flushes are still in flight
        self._flushing: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.flushes = 0
        self.records = 0
        self.pings = 0

    def submit(self, groups: list[Group], count: int) -> asyncio.Future[None]:
        """Queue a request's ``count`` validated pings, grouped by ``self.keying``; the future resolves
        when Kafka acked them (or fails with why not).

        The future is shared by every request of the flush: awaiting it is all a request does.
        """
        done = self._done
        if done is None:
            loop = asyncio.get_running_loop()
            done = self._done = loop.create_future()
            self._deadline = loop.time() + self.timeout_s
            self._handle = loop.call_later(self.linger_s, self._linger_over)
        self._pending.extend(groups)
        self._requests += 1
        self._pings += count
        return done

    def _linger_over(self) -> None:
        self._handle = None
        if len(self._flushing) < self.max_in_flight:
            self._flush()
        else:
            # A producer sends one request per broker at a time (aiokafka): one more flush than
            # there are producers would only queue behind the others as more, smaller records.
            # Instead this one goes the moment one is acknowledged, with whatever arrived meanwhile.
            self._due = True

    def _flush(self) -> None:
        groups, done, requests, count = self._pending, self._done, self._requests, self._pings
        self._pending, self._done, self._due, self._requests, self._pings = [], None, False, 0, 0
        if done is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._produce(groups, done, self._deadline, requests, count)
        )
        self._flushing.add(task)
        self._tasks.add(task)  # keep a reference until done (the loop holds only weak ones)
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._release(task)

    def _release(self, task: asyncio.Task[Any] | None) -> None:
        """``task``'s flush is over: the next one, if due, starts now.

        Called by the flush itself before it wakes its requests: the next flush's records are
        then built and handed to the producer before ~30 waiting requests write their answers.
        """
        if task is not None and task in self._flushing:
            self._flushing.discard(task)
            if self._due:
                self._flush()

    async def _produce(
        self, groups: list[Group], done: asyncio.Future[None], deadline: float, requests: int, count: int
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            left = deadline - loop.time()
            if left <= 0:  # spent waiting behind a flush that took its whole timeout
                raise KafkaUnavailable("Kafka did not acknowledge in time")
            n = self.partitions()
            now = self.clock()
            placed = place(groups, n, self.max_pings)
            records = [(key.encode(), encode_record(key, fragments, now)) for key, _, fragments, _ in placed]
            parts = [part for _, part, _, _ in placed] if n else None
            self.flushes += 1
            self.records += len(records)
            self.pings += count
            await self.send(records, left, parts)
        except asyncio.CancelledError:
            # shutting down mid-flush: the requests hear "unavailable", never a cancellation of their own
            if not done.done():
                done.set_exception(KafkaUnavailable("shutting down"))
            raise
        except Exception as exc:  # every waiting request must hear of it
            self._release(asyncio.current_task())
            if not done.done():
                done.set_exception(exc)
            return
        self._release(asyncio.current_task())
        if not done.done():
            done.set_result(None)
        if self.on_acked is not None:
            # the flush's first request waited longest: its wait stands for every request's (an
            # upper bound, by at most the linger)
            self.on_acked(requests, count, loop.time() - (deadline - self.timeout_s))

    async def drain(self) -> None:
        """Flush what is waiting now and wait for every flush in progress (at shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        while self._tasks or self._done is not None:
            if len(self._flushing) < self.max_in_flight:
                self._flush()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
