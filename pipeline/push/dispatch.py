"""Delivery: passes over the drivers with news, writing their frames straight to their sockets.

The hub queues an update in each subscriber's outbox (coalescing per cell or incident)
and notifies the dispatcher once per driver. A driver is written at most once per spacing
(adapted to the passes' cost, up to ``TRAVERZ_PUSH_TICK_MS``), counted from its own last
write: a busy worker joins a driver's several news into one write, and the writes to
different drivers are spread over that time in small passes instead of one burst to every
driver per tick (a burst held the loop — Kafka included — for its whole length, and left
the clients a backlog to drain). A worker with little to write spaces nothing: a pass runs
each loop turn, after a whole Kafka batch was applied, or a subscribe handled. Per driver
a pass is a rate-limit take and one ``transport.write`` of the pre-encoded frames joined
(still one message per WebSocket frame): no task wake-up, no await, no per-message encoding.

A driver is handed to its sender task (``wake``: pipeline/push/stream.py starts one) only
when it needs waiting: its socket is over the high-water mark (its news keep coalescing in the outbox
meanwhile, and a socket stuck past the limit is dropped), its rate limit holds the rest
back, its outbox overflowed (closed with 1013), or it is served through plain ASGI sends
(no raw socket: another server, a test client).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from operator import itemgetter

from pipeline.metrics import Counter
from pipeline.push.delivery import DeliveryLatency
from pipeline.push.frames import RawSocket
from pipeline.push.hub import BURST, Client, Message

_TEXT, _FRAME = itemgetter("text"), itemgetter("frame")


def joined(batch: list[Message]) -> bytes:
    """The frames of a batch as one write (one frame per message)."""
    return b"".join(map(_FRAME, batch))


# A busy worker's passes take at most about 1/PASS_SPACING of its time (below the tick): at
# the bench's 120k messages/s that reaches the tick, and a driver's ~12 news/s go out in ~3-4
# writes instead of 12; a pass for a handful of drivers costs microseconds and waits for none.
PASS_SPACING = 4.0
# A pass also takes the drivers due within this share of the spacing: passes of a busy worker
# come ~SLICES times per spacing, each for about that share of its drivers.
SLICES = 8
TIMER_S = 0.001  # the loop's timer resolution: a driver due within it is due now
# A pass writes for at most this long, then yields to the loop and goes on in the next turn. Without a
# bound, drivers written in one pass were due together again one spacing later, each long pass made
# more drivers due by its end, and passes grew to ~7,000 drivers and 120-240 ms (bench push at 105k
# msgs/s): Kafka's records and the hub's fan-out waited behind them, 100-400 ms of every message's
# latency. Checked every BUDGET_EVERY drivers (a clock read per driver would cost more than it saves).
PASS_BUDGET_S = 0.004
BUDGET_EVERY = 16
# Behind on Kafka (its newest news older than the tick), the spacing may grow to this many ticks:
# written less often, a driver's write carries more frames, so the worker's time goes to catching
# up instead of to syscalls (a worker behind wrote ~2.9 frames per write and fell further behind).
CATCHUP = 3.0


def _set_wake(client: Client) -> None:
    client.wake.set()


class Dispatcher:
    """Drivers are written at most once per ``spacing`` (less 1/SLICES of it), counted from their own
    last write, in FIFO order of their first news since. The spacing is ``PASS_SPACING`` times the
    time the passes took over the last spacing (writing each busy driver once), at most ``tick_s``:
    a worker with little to write passes at once each loop turn; a busy one waits (up to the tick)
    so that a driver's news share one write — per write, not per byte, is what the kernel charges
    on the sender's side (on loopback the receiver's TCP work too). A driver's first news waits at
    most one spacing: whoever is ahead of it in the queue got its own first news earlier."""

    def __init__(
        self,
        delivered: Counter,
        latency: DeliveryLatency,
        tick_s: float = 0.0,
        wake: Callable[[Client], None] | None = None,
        writes: Counter | None = None,
        lag: Callable[[], float] | None = None,
        published: Callable[[], float | None] | None = None,
        lead_s: float = 0.0,
    ) -> None:
        self.delivered = delivered
        self.lag = lag  # s the consumer is behind the topics (pipeline/push/service.py)
        # when the news being queued now was published (time.monotonic(); None: now), and how much
        # sooner than its spacing a driver may be written for news that reached the worker late
        self.published, self.lead_s = published, lead_s
        self.writes = writes  # socket writes by the passes (each of one or more frames)
        self.wake = wake or _set_wake
        self.latency = latency
        self.tick_s = tick_s
        # drivers with news in order of notice, and when each may be written (its last write + the
        # spacing then): two deques, not one of pairs — a pair per notice, alive until its pass,
        # made the young GC generation fill and collect ~50 times a second
        self.ready: collections.deque[Client] = collections.deque()
        self.due: collections.deque[float] = collections.deque()
        self.scheduled = False
        self.spacing = 0.0  # a driver is written no sooner than this after its last write
        self.window_start = 0.0  # time.monotonic(): the passes' cost is summed over one spacing
        self.window_busy = 0.0

    def attach(self, client: Client, sock: RawSocket) -> None:
        """Serve ``client`` by direct writes to ``sock`` from now on."""
        client.sock = sock
        client.notify = self.notify

    def detach(self, client: Client) -> None:
        client.sock = None
        client.notify = None

    def notify(self, client: Client) -> None:
        """The hub's hook: ``client`` has news; deliver it one spacing after its last write (or at
        the end of this loop turn). News published before that write, which reached the worker only
        after it (its time in Kafka), brings the write forward by that time, up to ``lead_s``: the
        spacing counts from its publication, not from its arrival."""
        self.ready.append(client)
        due = client.written + self.spacing
        if self.published is not None and (at := self.published()) is not None and at < client.written:
            due -= min(client.written - at, self.lead_s)
        self.due.append(due)
        if not self.scheduled:
            self._schedule(asyncio.get_running_loop())

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self.scheduled = True
        wait = self.due[0] - self._early() - time.monotonic()
        if wait > 0:
            loop.call_later(wait, self.flush)
        else:
            loop.call_soon(self.flush)

    def _early(self) -> float:
        """How far ahead of its time a driver may be written: passes gather SLICES per spacing."""
        return max(self.spacing / SLICES, TIMER_S)

    def flush(self) -> int:
        """Write the due drivers' pending frames that their socket and rate limit take now."""
        self.scheduled = False
        now = time.monotonic()
        horizon = now + self._early()
        ready, due, wake, sent, writes = self.ready, self.due, self.wake, list[Message](), 0
        start, n = now, 0
        for _ in range(len(ready)):  # not those queued meanwhile (a pass queues none, but bounded)
            if due[0] > horizon:
                break
            n += 1
            if n % BUDGET_EVERY == 0:
                now = time.monotonic()  # (also each driver's write time, so drivers spread by it)
                if now - start > PASS_BUDGET_S:
                    break  # the rest of the due drivers in the next loop turn (scheduled below)
            client = ready.popleft()
            due.popleft()
            client.notified = False
            sock = client.sock
            if sock is None:
                continue  # gone meanwhile
            if client.overflowed or not sock.ready():
                wake(client)  # its sender closes it, waits for the socket, or finds it closed
                continue
            # Client.take inlined for the common case, everything pending within the rate limit
            # (this loop runs once per driver written, ~5e4 times a second)
            outbox = client.outbox
            tokens = client.tokens + (now - client.refilled) * client.rate
            if tokens > BURST:
                tokens = BURST
            client.refilled = now
            k = len(outbox)
            if k <= tokens + 1e-9:
                client.tokens = tokens - k
                if k:  # (its sender may have taken it all meanwhile)
                    msgs = outbox.values()
                    sock.write(next(iter(msgs))["frame"] if k == 1 else b"".join(map(_FRAME, msgs)))
                    sent += msgs
                    outbox.clear()
                    writes += 1
                    client.written = now
                continue
            client.tokens, client.refilled = tokens, now
            batch = client.take(now)  # rate-limited: what the tokens allow, oldest first
            if batch:
                sock.write(joined(batch))
                sent += batch
                writes += 1
                client.written = now
            wake(client)  # its sender paces the rest
        if writes and self.writes is not None:
            self.writes.inc(writes)
        if sent:
            self.delivered.inc(len(sent))
            # counted in C: one latency observation per update, weighted by its drivers
            self.latency.sent_counts(collections.Counter(map(_TEXT, sent)), time.time())
        if self.tick_s:
            end = time.monotonic()
            self.window_busy += end - start
            if end - self.window_start >= self.spacing:  # a spacing's worth of passes: adapt it
                cap = self.tick_s
                if self.lag is not None and self.lag() > cap:
                    cap *= CATCHUP
                self.spacing = min(cap, PASS_SPACING * self.window_busy)
                self.window_start, self.window_busy = end, 0.0
        if ready and not self.scheduled:
            self._schedule(asyncio.get_running_loop())
        return len(sent)
