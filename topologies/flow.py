"""Faust's consumer and agent buffers, corrected so a rebalance can never commit past an unprocessed record.

The loss (the survivor of a killed worker ended one record short in one cell)
was traced with per-record logs of the consumer's callback, the agent and the
acknowledgements: a record was handed to the agent's buffer yet never reached
the agent, and the commit went past it. Three faust-streaming 0.15.3 behaviours
line up:

1. At the end of a rebalance's recovery faust resumes the stream partitions,
   awaits its seek to the committed offsets — the fetcher, whose flow recovery
   already resumed, delivers records meanwhile — and only then calls
   ``flow_control.resume()``, which **clears every agent buffer**
   (``FlowControlEvent.resume`` → ``FlowControlQueue.clear``, the channels are
   created ``clear_on_resume=True``). A record delivered in that window is
   gone; the consumer already counts it as read (``_read_offset``), so no
   refetch brings it back.
2. When the fetcher is still handing out a batch fetched before that seek, the
   seek has reset ``_read_offset`` to the committed offset, so the next record
   looks like a jump and faust records the "gap" as acknowledged
   (``Consumer._add_gap``) — records nobody acknowledged (faust #559).
3. ``Consumer._new_offset`` withholds a commit only when the first acked
   offset is *more than one* past the committed one (``min(acked) - committed
   > 1``): one missing record at the head is committed over (faust #606, open
   PR #707). And for a partition the group never committed it has no head at
   all: it commits the first run of acks wherever it starts.
4. That last case is not rare: faust's fetcher silently discards records of a
   partition it paused after aiokafka fetched them, and relies on the seek to
   the committed offsets at the end of the rebalance to fetch them again — but
   for a partition without a committed offset there is no seek (aiokafka's
   ``seek_to_committed`` skips it). Seen: a worker joining during the feed got
   a never-committed partition from offset 18, committed 19, and 18 records
   were never processed by anyone (a new group, e.g. after a rescale, has only
   such partitions).

The fix, at the three places: agent buffers are cleared when faust suspends
the flow (a rebalance starts: what they hold belongs to the old generation and
is fetched again) but not when it resumes it (what they hold then was fetched
in the new generation and is valid); gaps are not acknowledged on our behalf
(the source topics are neither compacted nor transactional, so their offsets
have no holes); a commit never starts past the committed offset; and a
partition the group never committed is sought to its first offset (what
``auto_offset_reset="earliest"`` means), which also gives its commits a head.
"""

from __future__ import annotations

import logging
import time
from functools import cached_property
from typing import Any

import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from mode.utils.queues import ThrowableQueue

from topologies.drain import drain_messages
from topologies.fastpath import RawSchema, install_quick_ebb

log = logging.getLogger(__name__)
STALL_WARN_S = 30.0  # a head gap held this long is a record that was lost before the agent


class ResumeKeepingQueue(ThrowableQueue[Any]):
    """An agent buffer that faust empties when the flow stops, not when it resumes."""

    def clear(self) -> None:
        # FlowControlEvent.clear() runs right after suspend() (rebalance start, stop): inactive then.
        # FlowControlEvent.resume() re-activates and then clears: keep the new generation's records.
        if self._flow_control.is_active():
            return
        super().clear()


class SourceTopic(faust.Topic):
    """A topic whose agent buffers are :class:`ResumeKeepingQueue` (clones, as agents make them, too).

    Its records are decoded by :class:`topologies.fastpath.RawSchema` (clones share the schema).
    """

    def _get_default_schema(
        self,
        key_type: Any = None,
        value_type: Any = None,
        key_serializer: Any = None,
        value_serializer: Any = None,
        allow_empty: bool | None = None,
    ) -> RawSchema:
        # faust's default (``conf.Schema``), without the registry round-trip for raw bytes
        return RawSchema(
            key_type=key_type,
            value_type=value_type,
            key_serializer=key_serializer,
            value_serializer=value_serializer,
            allow_empty=allow_empty,
        )

    @property
    def queue(self) -> ThrowableQueue[Any]:
        if self._queue is None:
            maxsize = self.maxsize if self.maxsize is not None else self.app.conf.stream_buffer_maxsize
            self._queue = ResumeKeepingQueue(
                maxsize=maxsize, flow_control=self.app.flow_control, clear_on_resume=True  # managed: cleared on stop
            )
        queue: ThrowableQueue[Any] = self._queue
        return queue


FETCH_MAX_WAIT_MS = 100


class QuickFetchThread(AIOKafkaConsumerThread):
    """faust's consumer thread with a 100-ms fetch wait instead of the hard-coded 1,500 ms.

    With 1,500 ms a record could wait that long at the broker: a fetch stays open
    until data arrives for one of the partitions *it asked for*, and those are
    only the partitions with nothing buffered at the time; a record landing in
    another one waits for that fetch to come back empty-handed. Measured with
    the latency probes of ``traverz bench stream`` at 5,000 pings/s: produce →
    processed 1.2–1.7 s with the worker 57 % idle. A shorter wait costs an empty
    fetch per 100 ms when idle.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by its Fetcher when it starts
        return consumer


class StrictCommitConsumer(AIOKafkaConsumer):
    """Commits only runs of acknowledged offsets that start at the committed offset."""

    def _new_consumer_thread(self) -> QuickFetchThread:
        return QuickFetchThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - the worker's fetch loop
        await drain_messages(self, fetcher)  # faust's loop, without four tasks per record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held_since: dict[TP, float] = {}

    async def perform_seek(self) -> None:
        await super().perform_seek()
        fresh = [
            tp
            for tp in self.assignment()
            if self.app.topics.acks_enabled_for(tp.topic) and self._committed_offset[tp] is None
        ]
        if fresh:
            for tp, offset in (await self.earliest_offsets(*fresh)).items():
                await self.seek(tp, offset)
                self._committed_offset[tp] = offset  # the head: nothing before it exists

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Our source topics have contiguous offsets: a "gap" is faust's own read-offset
        # bookkeeping racing a seek, and marking it acknowledged would commit unprocessed records.
        return None

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed is not None and min(acked) > committed:
            # the record at the committed offset is not acknowledged yet: nothing to commit
            since = self._held_since.setdefault(tp, time.monotonic())
            if time.monotonic() - since > STALL_WARN_S:
                log.warning("%s: offset %d unacknowledged for %.0f s (acked from %d)",
                            tp, committed, time.monotonic() - since, min(acked))
                self._held_since[tp] = time.monotonic()
            return None
        self._held_since.pop(tp, None)
        offset: int | None = super()._new_offset(tp)
        return offset


class TraverzApp(faust.App):
    """``faust.App`` with :class:`StrictCommitConsumer`, and a shutdown that does not wait for acks.

    On stop faust waits until the agents acknowledged every record handed to them
    (``stream_wait_empty``). Ours hold records unacknowledged until their state is
    written back (``topologies/app.py``, ``Held``), which the stopping app no longer
    does: a SIGTERM waited forever, the process was killed after its grace period,
    and without a clean leave the group waited out the session timeout before
    giving its partitions to anyone (a restart took 60 s more). At shutdown
    nothing needs the wait: what was not acknowledged is not committed, the next
    owner replays it, and the seq dedupe counts it once. Rebalances still wait.
    """

    stopping = False

    @cached_property
    def _event_cls(self) -> Any:
        return self.conf.Event

    def create_event(self, key: Any, value: Any, headers: Any, message: Any) -> Any:
        # faust's, without looking the setting up per record (Settings' __getattribute__ is slow)
        return self._event_cls(self, key, value, headers, message)

    def _new_producer(self) -> Any:
        producer = super()._new_producer()
        install_quick_ebb(producer)  # its ebb check before each record reads no setting (topologies/fastpath.py)
        return producer

    def on_init_dependencies(self) -> Any:
        deps = super().on_init_dependencies()
        # faust's Monitor sensor keeps per-event statistics (timings, weak-key dicts per stream)
        # for its own web pages, which this worker does not serve: ~1.5 % of the worker's time
        # at 30,000 pings/s. Our figures are in /metrics (pipeline/worker_metrics.py).
        self.sensors.remove(self.monitor)
        return deps

    async def on_stop(self) -> None:
        self.stopping = True
        await super().on_stop()

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        if self.stopping:
            return
        await super()._consumer_wait_empty(consumer, logger)

    def _new_consumer(self) -> StrictCommitConsumer:
        return StrictCommitConsumer(
            self.transport,
            callback=self.topics.on_message,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
            loop=self.loop,
        )


class QuietWorker(faust.Worker):
    """``faust.Worker`` without the terminal spinner, which sets the root logger to DEBUG for good.

    faust starts a progress spinner whenever the level is WARN or above and, to
    turn it on every log call, lowers the *root logger* to DEBUG (``faust.Worker.
    _setup_spinner_handler``) — and never raises it back. Every ``logger.debug``
    in faust and aiokafka (several per message during a changelog restore, per
    fetch and produce afterwards) then builds a ``LogRecord``, walks the stack
    for its caller, and is only dropped by the handler's level. The worker's
    log goes to a file or a collector, where a spinner is noise anyway.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None  # the root keeps the level from ``--loglevel``
