"""pipeline.push.dispatch and frames: one pass, one write per driver, the slow path only when needed."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import orjson

from pipeline import geo
from pipeline.metrics import Registry
from pipeline.push.delivery import DeliveryLatency
from pipeline.push.dispatch import BUDGET_EVERY, Dispatcher
from pipeline.push.frames import text_frame
from pipeline.push.hub import BURST, Client, Hub, prepared

A = geo.cell(48.8566, 2.3522, 9)


class MemorySocket:
    """The RawSocket surface, in memory: what was written, and a switch for the high-water mark."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.is_writable = True
        self.is_open = True

    def open(self) -> bool:
        return self.is_open

    def ready(self) -> bool:
        return self.is_open and self.is_writable

    def writable(self) -> bool:
        return self.is_writable

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def frames_of(data: bytes) -> list[Any]:
    """Split server frames (unmasked, final, text) and decode each payload."""
    out, pos = [], 0
    while pos < len(data):
        assert data[pos] == 0x81
        n, hdr = data[pos + 1], 2
        if n == 126:
            n, hdr = struct.unpack_from("!H", data, pos + 2)[0], 4
        elif n == 127:
            n, hdr = struct.unpack_from("!Q", data, pos + 2)[0], 10
        out.append(orjson.loads(data[pos + hdr : pos + hdr + n]))
        pos += hdr + n
    return out


def _cond(version: int, speed: float) -> dict[str, Any]:
    return {"cell": A, "version": version, "sectors": [{"sector": 0, "median_mps": speed, "level": 3}]}


def _setup(
    n: int, socket: type[MemorySocket] = MemorySocket
) -> tuple[Hub, Dispatcher, list[Client], list[MemorySocket]]:
    reg = Registry()
    d = Dispatcher(reg.counter("sent", "sent"), DeliveryLatency(reg))
    h = Hub()
    clients, socks = [], []
    for i in range(n):
        cl, sock = Client(f"d{i}"), socket()
        d.attach(cl, sock)  # type: ignore[arg-type]
        h.add(cl)
        h.subscribe(cl, {A: 0})
        clients.append(cl)
        socks.append(sock)
    return h, d, clients, socks


def test_text_frame_lengths() -> None:
    for size in (0, 125, 126, 65535, 65536):
        payload = b"x" * size
        assert frames_of(text_frame(b'"' + payload + b'"')) == [payload.decode()]


def test_prepared_frame_is_the_text_encoded_once() -> None:
    msg = prepared({"type": "condition", "condition": {"cell": "c", "note": "é"}})
    assert frames_of(msg["frame"]) == [orjson.loads(msg["text"])]


async def test_one_pass_per_loop_turn_one_write_per_driver() -> None:
    h, d, clients, socks = _setup(3)
    h.on_condition(A, _cond(1, 3.0))
    h.on_condition(A, _cond(2, 13.0))  # coalesces with the first: same cell
    h.on_alert({"id": "i1", "type": "crash", "state": "opened", "cell": A, "lat": 48.8566, "lon": 2.3522,
                "heading_deg": 0.0, "confidence": 0.9, "version": 3})  # fmt: skip
    assert all(s.writes == [] for s in socks)  # nothing before the loop turn ends
    assert len(d.ready) == 3  # each driver notified once, whatever it was queued
    await asyncio.sleep(0)
    for sock, cl in zip(socks, clients, strict=True):
        assert len(sock.writes) == 1
        got = frames_of(sock.writes[0])
        assert [m["type"] for m in got] == ["condition", "alert"] and got[0]["condition"]["version"] == 2
        assert not cl.wake.is_set() and not cl.outbox
    assert d.delivered.get() == 6
    assert d.latency.hist.n == 0  # no updated_at in these updates: nothing to observe


async def test_busy_socket_hands_over_to_the_sender_and_coalesces() -> None:
    h, _, (cl,), (sock,) = _setup(1)
    sock.is_writable = False
    h.on_condition(A, _cond(1, 3.0))
    await asyncio.sleep(0)
    assert sock.writes == [] and cl.wake.is_set() and len(cl.outbox) == 1
    h.on_condition(A, _cond(2, 13.0))
    await asyncio.sleep(0)
    assert sock.writes == [] and [m["text"] for m in cl.outbox.values()] == [h.conditions[A].msg["text"]]


async def test_rate_limited_rest_goes_to_the_sender() -> None:
    _, _, (cl,), (sock,) = _setup(1)
    for i in range(int(BURST) + 5):
        cl.enqueue(f"k{i}", prepared({"type": "condition", "i": i}))
    await asyncio.sleep(0)
    assert len(frames_of(sock.writes[0])) == int(BURST)
    assert len(cl.outbox) == 5 and cl.wake.is_set()


async def test_overflow_and_detach() -> None:
    h, d, (cl, gone), (sock, gone_sock) = _setup(2)
    cl.overflowed = True
    d.detach(gone)
    h.on_condition(A, _cond(1, 3.0))
    await asyncio.sleep(0)
    assert sock.writes == [] and cl.wake.is_set()  # its sender closes it with 1013
    assert gone_sock.writes == [] and gone.wake.is_set()  # detached: back to the sender's path


class SlowSocket(MemorySocket):
    """Each write takes 20 ms: passes over it are costly."""

    def write(self, data: bytes) -> None:
        time.sleep(0.02)
        super().write(data)


class MillisecondSocket(MemorySocket):
    def write(self, data: bytes) -> None:
        time.sleep(0.001)
        super().write(data)


async def test_a_long_pass_yields_to_the_loop_between_drivers() -> None:
    # 64 due drivers whose writes take 1 ms each: a pass stops after its budget (checked every 16
    # drivers), so what was queued on the loop meanwhile (Kafka's records, sockets) runs before the rest
    h, d, _, socks = _setup(64, MillisecondSocket)
    h.on_condition(A, _cond(1, 3.0))
    seen: list[int] = []
    asyncio.get_running_loop().call_soon(lambda: seen.append(sum(len(s.writes) for s in socks)))
    for _ in range(50):
        await asyncio.sleep(0)
    assert 0 < seen[0] <= BUDGET_EVERY  # the first pass ended at its budget; the marker ran next
    assert [len(s.writes) for s in socks] == [1] * 64  # the rest in the following loop turns
    assert d.delivered.get() == 64 and not d.ready


async def test_costly_passes_are_spaced_up_to_the_tick_and_join_a_drivers_news() -> None:
    reg = Registry()
    d = Dispatcher(reg.counter("sent", "sent"), DeliveryLatency(reg), tick_s=0.08, writes=reg.counter("w", "w"))
    h, cheap, costly = Hub(), Client("cheap"), Client("costly")
    socks = {cheap: MemorySocket(), costly: SlowSocket()}
    for cl, sock in socks.items():
        d.attach(cl, sock)  # type: ignore[arg-type]
        h.add(cl)
    h.subscribe(cheap, {A: 0})
    h.on_condition(A, _cond(1, 3.0))
    await asyncio.sleep(0)
    h.on_condition(A, _cond(2, 13.0))
    for _ in range(20):  # (a loaded machine may stretch the cheap pass to a millisecond or two)
        if len(socks[cheap].writes) == 2:
            break
        await asyncio.sleep(0.001)
    assert len(socks[cheap].writes) == 2  # a cheap pass: the next one runs at once, well within the tick
    h.subscribe(costly, {A: 0})
    await asyncio.sleep(0)  # a 20 ms pass: the next one waits min(tick, 4 × 20 ms or more) = 80 ms
    assert len(socks[costly].writes) == 1 and d.spacing == 0.08
    h.on_alert({"id": "i1", "type": "crash", "state": "opened", "cell": A, "lat": 48.8566, "lon": 2.3522,
                "heading_deg": 0.0, "confidence": 0.9, "version": 3})  # fmt: skip
    await asyncio.sleep(0)
    h.on_condition(A, _cond(4, 3.0))
    await asyncio.sleep(0)
    assert len(socks[cheap].writes) == 2  # within the spacing: they wait
    await asyncio.sleep(0.15)
    assert [len(s.writes) for s in socks.values()] == [3, 2]
    for sock in socks.values():  # one write, both news
        assert [m["type"] for m in frames_of(sock.writes[-1])] == ["alert", "condition"]
    assert d.writes is not None and d.writes.get() == 5 and d.delivered.get() == 7  # frames per write counted


def _two_drivers(d: Dispatcher, first: str, second: str) -> tuple[Hub, Client, Client, str, dict[Client, MemorySocket]]:
    """Two drivers on ``d``'s sockets, the first watching A, the second another cell; spacing 0.2 s."""
    h, one, two = Hub(), Client(first), Client(second)
    other = geo.cell(48.87, 2.36, 9)
    socks = {one: MemorySocket(), two: MemorySocket()}
    for cl, sock in socks.items():
        d.attach(cl, sock)  # type: ignore[arg-type]
        h.add(cl)
    h.subscribe(one, {A: 0})
    h.subscribe(two, {other: 0})
    d.spacing = 0.2  # (tick 0: it stays)
    return h, one, two, other, socks


async def test_each_driver_is_spaced_from_its_own_last_write() -> None:
    reg = Registry()
    d = Dispatcher(reg.counter("sent", "sent"), DeliveryLatency(reg))  # tick 0: the spacing set below stays
    h, _, b, other, socks = _two_drivers(d, "a", "b")
    h.on_condition(A, _cond(1, 3.0))  # a was never written: at once
    await asyncio.sleep(0)
    await asyncio.sleep(0.1)
    h.on_condition(other, {**_cond(1, 3.0), "cell": other})  # b neither: at once, 0.1 s after a
    await asyncio.sleep(0)
    assert [len(s.writes) for s in socks.values()] == [1, 1]
    h.on_condition(A, _cond(2, 13.0))  # news for both now: a's is due 0.2 s after its write, b's 0.1 s later
    h.on_condition(other, {**_cond(2, 13.0), "cell": other})
    await asyncio.sleep(0.13)
    assert [len(s.writes) for s in socks.values()] == [2, 1]  # not one burst to every driver
    await asyncio.sleep(0.12)
    assert [len(s.writes) for s in socks.values()] == [2, 2]
    assert frames_of(socks[b].writes[-1])[0]["condition"]["version"] == 2


async def test_news_that_reached_the_worker_late_brings_its_drivers_write_forward() -> None:
    published: list[float | None] = [None]
    reg = Registry()
    d = Dispatcher(reg.counter("sent", "sent"), DeliveryLatency(reg), published=lambda: published[0], lead_s=0.1)
    h, late, _, other, socks = _two_drivers(d, "late", "fresh")
    h.on_condition(A, _cond(1, 3.0))
    h.on_condition(other, {**_cond(1, 3.0), "cell": other})
    await asyncio.sleep(0)  # both written now (never before)
    published[0] = late.written - 0.3  # 0.3 s in Kafka: published before that write, arrived after it
    h.on_condition(A, _cond(2, 13.0))
    published[0] = time.monotonic()  # straight from Kafka
    h.on_condition(other, {**_cond(2, 13.0), "cell": other})
    published[0] = None
    await asyncio.sleep(0.03)
    assert [len(s.writes) for s in socks.values()] == [1, 1]  # forward by at most lead_s, not 0.3 s
    await asyncio.sleep(0.1)  # late: due 0.2 - 0.1 s after its write; fresh: 0.2 s (each less 0.2 / SLICES)
    assert [len(s.writes) for s in socks.values()] == [2, 1]
    await asyncio.sleep(0.12)
    assert [len(s.writes) for s in socks.values()] == [2, 2]


async def test_behind_on_kafka_the_spacing_may_pass_the_tick() -> None:
    lag = [0.0]
    reg = Registry()
    d = Dispatcher(reg.counter("sent", "sent"), DeliveryLatency(reg), tick_s=0.05, lag=lambda: lag[0])
    h, cl = Hub(), Client("costly")
    d.attach(cl, SlowSocket())  # type: ignore[arg-type]
    h.add(cl)
    h.subscribe(cl, {A: 0})
    h.on_condition(A, _cond(1, 3.0))
    await asyncio.sleep(0)  # a 20 ms pass: 4 x 20 ms, capped at the tick
    assert d.spacing == 0.05
    lag[0] = 2.0  # the consumer's newest record is 2 s old
    for v in (2, 3):
        h.on_condition(A, _cond(v, 13.0 if v % 2 else 3.0))
        await asyncio.sleep(0.1)
    assert 0.05 < d.spacing <= 0.15  # 4 x 2 x 20 ms over the last spacing, at most 3 ticks: fuller writes
    lag[0] = 0.0
    for v in (4, 5):  # the spacing adapts once a spacing's worth of passes is over
        h.on_condition(A, _cond(v, 3.0 if v % 2 else 13.0))
        await asyncio.sleep(0.2)
    assert d.spacing == 0.05  # caught up: back to the tick
