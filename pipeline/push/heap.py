"""Keep the cyclic GC's full collections off the connected drivers' objects.

A connected driver holds ~140 GC-tracked objects (uvicorn's protocol, the websockets state
machine, starlette's WebSocket, the tasks and coroutines serving it, the hub's Client). A
full collection walks all of them with the event loop stopped: at 10,000 drivers 0.7–1.2 s,
every 3–5 s under 100k messages/s of news (measured with ``gc.callbacks`` in ``traverz bench
push``) — most of the push worker's p99 and a third of its CPU.

So the worker freezes them: ``gc.freeze()`` (O(1): every tracked object moves to the
permanent generation, which no collection walks) once the worker is ready, and at most once
a tick afterwards when drivers connected meanwhile. What is left for the collector is what
was created since — news, timers, short-lived tasks — and a full collection of that takes
milliseconds. Frozen objects are still freed by reference counting; only cyclic garbage among
them waits (a leaving driver's exception tracebacks, say). So after ``collect_after``
departures the keeper unfreezes and collects once: one pause per that many departures
instead of one every few seconds.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from dataclasses import dataclass, field

TICK_S = 1.0
MIN_COLLECT_AFTER = 1000  # departures; and at least a quarter of the connected drivers


@dataclass
class HeapKeeper:
    """Counts arrivals and departures; ``tick`` freezes or collects. The gc functions are
    parameters so that unit tests do not freeze the test process's heap."""

    freeze: Callable[[], None] = gc.freeze
    unfreeze: Callable[[], None] = gc.unfreeze
    collect: Callable[[], int] = gc.collect
    arrived: int = 0  # since the last freeze
    departed: int = 0  # since the last full collection
    connected: int = 0
    collections: int = field(default=0)

    def arrive(self) -> None:
        self.arrived += 1
        self.connected += 1

    def depart(self) -> None:
        self.departed += 1
        self.connected -= 1

    def tick(self) -> str:
        """Freeze what arrived, or collect what departures left behind; what was done ('' for nothing)."""
        if self.departed >= max(MIN_COLLECT_AFTER, self.connected // 4):
            self.unfreeze()
            self.collect()
            self.freeze()
            self.departed = self.arrived = 0
            self.collections += 1
            return "collect"
        if self.arrived:
            self.freeze()
            self.arrived = 0
            return "freeze"
        return ""

    async def run(self, tick_s: float = TICK_S) -> None:
        """Freeze the startup heap now, then tick."""
        self.freeze()
        while True:
            await asyncio.sleep(tick_s)
            self.tick()
