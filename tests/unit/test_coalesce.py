"""The cross-request coalescer: fewer, larger records; every request hears of its ack or failure."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from pipeline.ingest.coalesce import Coalescer


def ping(dev: str, seq: int) -> dict[str, object]:
    return {"device_id": dev, "seq": seq, "ts": 1.0, "lat": 52.5, "lon": 13.4, "speed_mps": 1.0,
            "heading_deg": 0.0, "accuracy_m": 1.0}


async def test_requests_within_linger_share_one_record_per_key() -> None:
    sent: list[list[tuple[bytes, bytes]]] = []

    async def send(records: list[tuple[bytes, bytes]]) -> None:
        sent.append(records)

    c = Coalescer(send, linger_s=0.01)
    futs = [c.submit({"k1": [ping(f"d{i}", 1)]}) for i in range(20)]
    futs.append(c.submit({"k2": [ping("x", 1)]}))
    await asyncio.gather(*futs)
    assert len(sent) == 1
    by_key = {k.decode(): orjson.loads(v) for k, v in sent[0]}
    assert set(by_key) == {"k1", "k2"}
    assert len(by_key["k1"]["pings"]) == 20
    assert {p["device_id"] for p in by_key["k1"]["pings"]} == {f"d{i}" for i in range(20)}


async def test_records_are_capped_at_max_pings() -> None:
    sent: list[tuple[bytes, bytes]] = []

    async def send(records: list[tuple[bytes, bytes]]) -> None:
        sent.extend(records)

    c = Coalescer(send, linger_s=0.001, max_pings=7)
    await c.submit({"k": [ping("d", i) for i in range(20)]})
    sizes = [len(orjson.loads(v)["pings"]) for _, v in sent]
    assert sizes == [7, 7, 6]
    seqs = [p["seq"] for _, v in sent for p in orjson.loads(v)["pings"]]
    assert seqs == list(range(20))


async def test_a_failed_flush_fails_every_request_in_it_and_the_next_flush_is_fresh() -> None:
    calls = 0

    async def send(records: list[tuple[bytes, bytes]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("broker gone")

    c = Coalescer(send, linger_s=0.001)
    a, b = c.submit({"k": [ping("a", 1)]}), c.submit({"k": [ping("b", 1)]})
    for fut in (a, b):
        with pytest.raises(ConnectionError):
            await fut
    await c.submit({"k": [ping("c", 1)]})  # a new window, a new flush that succeeds
    assert calls == 2
