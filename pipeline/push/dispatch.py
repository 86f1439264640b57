"""Delivery: one pass over the drivers with news, writing their frames straight to their sockets.

The hub queues an update in each subscriber's outbox (coalescing per cell or incident)
and notifies the dispatcher once per driver. The pass runs once per event-loop turn —
after a whole Kafka batch was applied, or a subscribe handled — or, when passes got costly,
a few of their durations (up to ``TRAVERZ_PUSH_TICK_MS``) after the last one, so a driver
with several news gets them in one write, and a driver with none costs nothing. Per driver it is a
rate-limit take and one ``transport.write`` of the pre-encoded frames joined (still one
message per WebSocket frame): no task wake-up, no await, no per-message encoding.

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
# the bench's 100k messages/s that reaches the tick, and a driver's ~10 news/s go out in ~2
# writes instead of 10; a pass for a handful of drivers costs microseconds and waits for none.
PASS_SPACING = 4.0


def _set_wake(client: Client) -> None:
    client.wake.set()


class Dispatcher:
    """Passes are spaced by their own cost: the next one starts no sooner than ``PASS_SPACING``
    times the last one's duration after it, and at most ``tick_s`` after it. A worker with
    little to write passes at once each loop turn; a busy one waits (up to the tick) so that
    a driver's news share one write — per write, not per byte, is what the kernel charges
    on the sender's side (on loopback the receiver's TCP work too)."""

    def __init__(
        self,
        delivered: Counter,
        latency: DeliveryLatency,
        tick_s: float = 0.0,
        wake: Callable[[Client], None] | None = None,
        writes: Counter | None = None,
    ) -> None:
        self.delivered = delivered
        self.writes = writes  # socket writes by the passes (each of one or more frames)
        self.wake = wake or _set_wake
        self.latency = latency
        self.tick_s = tick_s
        self.sockets: dict[Client, RawSocket] = {}
        self.ready: list[Client] = []
        self.scheduled = False
        self.last_pass = 0.0  # loop time the last pass started
        self.spacing = 0.0  # the next pass starts no sooner than this after it

    def attach(self, client: Client, sock: RawSocket) -> None:
        """Serve ``client`` by direct writes to ``sock`` from now on."""
        self.sockets[client] = sock
        client.notify = self.notify

    def detach(self, client: Client) -> None:
        self.sockets.pop(client, None)
        client.notify = None

    def notify(self, client: Client) -> None:
        """The hub's hook: ``client`` has news; deliver at the end of this loop turn."""
        self.ready.append(client)
        if not self.scheduled:
            self.scheduled = True
            loop = asyncio.get_running_loop()
            wait = self.last_pass + self.spacing - loop.time()
            if wait > 0.001:  # below the loop's timer resolution: at once
                loop.call_later(wait, self.flush)
            else:
                loop.call_soon(self.flush)

    def flush(self) -> int:
        """Write every ready driver's pending frames that its socket and rate limit take now."""
        self.scheduled = False
        if self.tick_s:
            self.last_pass = asyncio.get_running_loop().time()
        ready, self.ready = self.ready, []
        now = time.monotonic()
        sockets, wake, sent, writes = self.sockets, self.wake, list[Message](), 0
        for client in ready:
            client.notified = False
            sock = sockets.get(client)
            if sock is None:
                continue  # gone meanwhile
            if client.overflowed or not sock.ready():
                wake(client)  # its sender closes it, waits for the socket, or finds it closed
                continue
            # Client.take inlined for the common case, everything pending within the rate limit
            # (this loop runs once per driver with news, ~1e5 times a second)
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
                continue
            client.tokens, client.refilled = tokens, now
            batch = client.take(now)  # rate-limited: what the tokens allow, oldest first
            if batch:
                sock.write(joined(batch))
                sent += batch
                writes += 1
            wake(client)  # its sender paces the rest
        if writes and self.writes is not None:
            self.writes.inc(writes)
        if sent:
            self.delivered.inc(len(sent))
            # counted in C: one latency observation per update, weighted by its drivers
            self.latency.sent_counts(collections.Counter(map(_TEXT, sent)), time.time())
        if self.tick_s:
            self.spacing = min(self.tick_s, PASS_SPACING * (time.monotonic() - now))
        return len(sent)
