"""Delivery: one pass over the drivers with news, writing their frames straight to their sockets.

The hub queues an update in each subscriber's outbox (coalescing per cell or incident)
and notifies the dispatcher once per driver. The pass runs once per event-loop turn —
after a whole Kafka batch was applied, or a subscribe handled — so a driver with several
news gets them in one write, and a driver with none costs nothing. Per driver it is a
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
from pipeline.push.hub import Client, Message


def joined(batch: list[Message]) -> bytes:
    """The frames of a batch as one write (one frame per message)."""
    return b"".join(m["frame"] for m in batch)


_TEXT = itemgetter("text")


def _set_wake(client: Client) -> None:
    client.wake.set()


class Dispatcher:
    """``tick_s``: at most one pass per tick. A pass runs as soon as news arrive after a quiet
    tick; under sustained news they wait for the tick, so each write carries more frames."""

    def __init__(
        self,
        delivered: Counter,
        latency: DeliveryLatency,
        tick_s: float = 0.0,
        wake: Callable[[Client], None] | None = None,
    ) -> None:
        self.delivered = delivered
        self.wake = wake or _set_wake
        self.latency = latency
        self.tick_s = tick_s
        self.sockets: dict[Client, RawSocket] = {}
        self.ready: list[Client] = []
        self.scheduled = False
        self.last_pass = 0.0

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
            wait = self.last_pass + self.tick_s - loop.time()
            if wait > 0:
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
        sockets, wake, sent = self.sockets, self.wake, list[Message]()
        for client in ready:
            client.notified = False
            sock = sockets.get(client)
            if sock is None:
                continue  # gone meanwhile
            if client.overflowed or not sock.ready():
                wake(client)  # its sender closes it, waits for the socket, or finds it closed
                continue
            batch = client.take(now)
            if batch:
                sock.write(batch[0]["frame"] if len(batch) == 1 else joined(batch))
                sent += batch
            if client.outbox:
                wake(client)  # rate-limited: its sender paces the rest
        if sent:
            self.delivered.inc(len(sent))
            # counted in C: one latency observation per update, weighted by its drivers
            self.latency.sent_counts(collections.Counter(map(_TEXT, sent)), time.time())
        return len(sent)
