"""The cross-request coalescer: fewer, larger records per partition; every request hears of its ack or failure."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from pipeline import geo
from pipeline.ingest import wire
from pipeline.ingest.coalesce import Coalescer, KafkaUnavailable, Send, partition_of, place

PARTITIONS = 8
BERLIN = (52.52, 13.405)


def ping(dev: str, seq: int, lat: float = 52.5, lon: float = 13.4) -> dict[str, Any]:
    return {"device_id": dev, "seq": seq, "ts": 1.0, "lat": lat, "lon": lon, "speed_mps": 1.0, "heading_deg": 0.0,
            "accuracy_m": 1.0}


def spread(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """Pings of ``n`` devices over ~20 km × 20 km: hundreds of res-7 keys over every partition."""
    rng = random.Random(seed)
    return [ping(f"d{i}", i, BERLIN[0] + rng.uniform(-0.1, 0.1), BERLIN[1] + rng.uniform(-0.15, 0.15))
            for i in range(n)]


def submit(c: Coalescer, batch: list[dict[str, Any]]) -> asyncio.Future[None]:
    """A request's pings handed to the coalescer as the handler does: keyed groups of JSON fragments."""
    return c.submit(wire.group(batch, c.keying), len(batch))


def placed(batch: list[dict[str, Any]], partitions: int | None, max_pings: int = 500) -> list[tuple[str, int, Any]]:
    """``place``'s records for single-ping requests, with their pings read back."""
    groups = [g for p in batch for g in wire.group([p], wire.Keying(max_pings=max_pings))]
    out = []
    for key_, part, fragments, count in place(groups, partitions, max_pings):
        ps = orjson.loads(b"[%s]" % b",".join(fragments))
        assert len(ps) == count <= max_pings
        out.append((key_, part, ps))
    return out


def kafka_partition(key: str, n: int = PARTITIONS) -> int:
    """Where aiokafka's default partitioner (the Java one's twin) puts a record with this key."""
    return int(DefaultPartitioner()(key.encode(), list(range(n)), list(range(n))))


def key(p: dict[str, Any]) -> str:
    return geo.key_cell(p["lat"], p["lon"], 7, 9)


# -- partition grouping (pure) ---------------------------------------------------------------
def test_partition_of_is_the_default_partitioners_choice() -> None:
    keys = {key(p) for p in spread(2000)}
    assert len(keys) > 100
    for n in (1, 3, 8, 12, 64):
        assert all(partition_of(k, n) == kafka_partition(k, n) for k in keys)


def test_a_record_holds_only_pings_whose_keys_hash_to_its_partition() -> None:
    batch = spread(3000)
    records = placed(batch, PARTITIONS)
    for record_key, part, ps in records:
        assert part == kafka_partition(record_key)
        assert record_key == key(ps[0])  # the key is one of its pings' keys
        assert {kafka_partition(key(p)) for p in ps} == {part}
    # full records but for each partition's last, every ping exactly once, in arrival order
    per_part: dict[int, int] = {}
    for p in batch:
        per_part[kafka_partition(key(p))] = per_part.get(kafka_partition(key(p)), 0) + 1
    assert len(per_part) == PARTITIONS and max(per_part.values()) > 500  # some partition needs two records
    assert sorted(part for _, part, _ in records) == sorted(
        part for part, n in per_part.items() for _ in range(-(-n // 500))
    )
    assert sorted(p["seq"] for _, _, ps in records for p in ps) == list(range(3000))
    for _, _, ps in records:
        assert [p["seq"] for p in ps] == sorted(p["seq"] for p in ps)


def test_records_are_capped_and_each_is_keyed_by_one_of_its_own_pings() -> None:
    batch = spread(1200, seed=2)
    records = placed(batch, 2, max_pings=50)
    assert all(1 <= len(ps) <= 50 for _, _, ps in records)
    for record_key, part, ps in records:
        assert record_key == key(ps[0])
        assert {kafka_partition(key(p), 2) for p in ps} == {kafka_partition(record_key, 2)} == {part}
    assert sorted(p["seq"] for _, _, ps in records for p in ps) == list(range(1200))


def test_a_request_s_groups_fill_records_whole_without_passing_the_cap() -> None:
    keying = wire.Keying(max_pings=7)
    requests = [wire.group([ping("d", 100 * r + i) for i in range(n)], keying) for r, n in enumerate((5, 3, 7, 1, 2))]
    records = place([g for gs in requests for g in gs], PARTITIONS, 7)
    # one key: a group that would pass 7 starts the next record
    assert [count for _, _, _, count in records] == [5, 3, 7, 3]
    assert [p["seq"] for _, _, frags, _ in records for p in orjson.loads(b"[%s]" % b",".join(frags))] == [
        *range(5), *range(100, 103), *range(200, 207), 300, 400, 401
    ]


@pytest.mark.parametrize("partitions", [None, 0])
def test_without_a_partition_count_pings_are_grouped_per_key(partitions: int | None) -> None:
    records = placed(spread(500, seed=3), partitions, max_pings=7)
    for record_key, part, ps in records:
        assert {key(p) for p in ps} == {record_key} and len(ps) <= 7 and part == -1
    assert sorted(p["seq"] for _, _, ps in records for p in ps) == list(range(500))


def test_the_key_is_the_res7_parent_of_the_res9_cell() -> None:
    # a spot whose res-7 cell is not the parent of its res-9 cell
    lats = (52.5 + i * 1e-4 for i in range(20_000))
    lat = next(la for la in lats if geo.cell(la, 13.4, 7) != geo.key_cell(la, 13.4, 7, 9))
    ((record_key, _, _),) = placed([ping("d", 1, lat, 13.4)], PARTITIONS)
    assert record_key == geo.key_cell(lat, 13.4, 7, 9)


# -- the coalescer --------------------------------------------------------------------------
Sent = list[list[tuple[bytes, bytes]]]


def recorder(sent: Sent, fail: int = 0, delay: float = 0.0) -> Send:
    calls = 0

    async def send(records: list[tuple[bytes, bytes]], timeout: float, parts: list[int] | None) -> None:
        nonlocal calls
        calls += 1
        assert timeout > 0
        if parts is not None:  # the partition the sink is told is the default partitioner's choice for the key
            assert parts == [kafka_partition(k.decode(), PARTITIONS) for k, _ in records]
        sent.append(records)
        await asyncio.sleep(delay)
        if calls <= fail:
            raise ConnectionError("broker gone")

    return send


async def test_requests_within_linger_share_one_record_per_partition() -> None:
    sent: Sent = []
    c = Coalescer(recorder(sent), lambda: PARTITIONS, linger_s=0.01)
    batch = spread(200, seed=4)
    futs = [submit(c, [p]) for p in batch]  # 200 single-ping requests
    assert len({id(f) for f in futs}) == 1  # one flush, one acknowledgement for all
    await asyncio.gather(*futs)
    assert len(sent) == 1 and c.flushes == 1
    records = [(k.decode(), orjson.loads(v)) for k, v in sent[0]]
    assert len(records) == PARTITIONS
    for record_key, doc in records:
        assert doc["v"] == 1 and doc["cell"] == record_key and isinstance(doc["ingest_ts"], float)
        assert {kafka_partition(key(p)) for p in doc["pings"]} == {kafka_partition(record_key)}
    assert sorted(p["device_id"] for _, d in records for p in d["pings"]) == sorted(f"d{i}" for i in range(200))


async def test_records_are_capped_at_max_pings() -> None:
    sent: Sent = []
    c = Coalescer(recorder(sent), linger_s=0.001, max_pings=7)
    await submit(c, [ping("d", i) for i in range(20)])
    sizes = [len(orjson.loads(v)["pings"]) for records in sent for _, v in records]
    assert sizes == [7, 7, 6]
    seqs = [p["seq"] for records in sent for _, v in records for p in orjson.loads(v)["pings"]]
    assert seqs == list(range(20))


async def test_a_failed_flush_fails_every_request_in_it_and_the_next_flush_is_fresh() -> None:
    sent: Sent = []
    c = Coalescer(recorder(sent, fail=1), linger_s=0.001)
    a, b = submit(c, [ping("a", 1)]), submit(c, [ping("b", 1)])
    for fut in (a, b):
        with pytest.raises(ConnectionError):
            await fut
    await submit(c, [ping("c", 1)])  # a new window, a new flush that succeeds
    assert len(sent) == 2


async def test_one_flush_in_flight_the_next_goes_when_it_is_acked_with_all_that_came_meanwhile() -> None:
    sent: Sent = []
    c = Coalescer(recorder(sent, delay=0.05), linger_s=0.001)
    first = submit(c, [ping("a", 1)])
    await asyncio.sleep(0.01)  # the first flush is in flight now
    later = [submit(c, [ping("b", i)]) for i in range(3)]
    await asyncio.sleep(0.01)
    later += [submit(c, [ping("c", i)]) for i in range(3)]
    assert len(sent) == 1  # the linger of the second is over, but it waits for the first ack
    await first
    await asyncio.gather(*later)
    assert len(sent) == 2
    assert len(orjson.loads(sent[1][0][1])["pings"]) == 6


async def test_the_next_flush_is_handed_over_before_the_acked_flushs_requests_wake() -> None:
    sent: Sent = []
    c = Coalescer(recorder(sent, delay=0.03), linger_s=0.001)
    first = submit(c, [ping("a", 1)])
    await asyncio.sleep(0.01)  # the first flush is in flight
    later = submit(c, [ping("b", 1)])
    await asyncio.sleep(0.01)  # its linger is over: due behind the first
    await first
    assert len(sent) == 2  # the next flush went out before this request even heard its ack
    await later


async def test_with_two_in_flight_a_flush_does_not_wait_for_the_one_before() -> None:
    sent: Sent = []
    c = Coalescer(recorder(sent, delay=0.05), linger_s=0.001, max_in_flight=2)
    first = submit(c, [ping("a", 1)])
    await asyncio.sleep(0.01)  # the first flush is in flight
    second = submit(c, [ping("b", 1)])
    await asyncio.sleep(0.01)
    assert len(sent) == 2 and not first.done()  # went out beside the first
    third = submit(c, [ping("c", 1)])
    await asyncio.sleep(0.01)
    assert len(sent) == 2  # a third waits for a free slot
    await asyncio.gather(first, second, third)
    assert len(sent) == 3


async def test_waiting_behind_a_slow_flush_counts_against_the_timeout() -> None:
    sent: Sent = []
    c = Coalescer(recorder(sent, delay=0.3), linger_s=0.001, timeout_s=0.2)
    loop = asyncio.get_running_loop()
    first = submit(c, [ping("a", 1)])
    await asyncio.sleep(0.01)
    t0 = loop.time()
    second = submit(c, [ping("b", 1)])
    await first  # the fake send ignores its timeout; the real one raises at it
    with pytest.raises(KafkaUnavailable):
        await second
    assert loop.time() - t0 < 0.35
    assert len(sent) == 1  # never sent: its time was up before its turn


async def test_drain_flushes_what_waits_and_waits_for_acks() -> None:
    sent: Sent = []
    c = Coalescer(recorder(sent, delay=0.02), linger_s=10.0)
    fut = submit(c, [ping("a", 1)])
    await c.drain()
    assert fut.done() and fut.exception() is None and len(sent) == 1


async def test_a_cancelled_flush_tells_its_requests_kafka_is_unavailable() -> None:
    started = asyncio.Event()

    async def send(records: list[tuple[bytes, bytes]], timeout: float, parts: list[int] | None) -> None:
        started.set()
        await asyncio.sleep(10)

    c = Coalescer(send, linger_s=0.001)
    fut = submit(c, [ping("a", 1)])
    await started.wait()
    for task in list(c._tasks):
        task.cancel()
    with pytest.raises(KafkaUnavailable):
        await fut


async def test_an_acked_flush_tells_its_requests_pings_and_wait_once_and_a_failed_one_nothing() -> None:
    sent: Sent = []
    told: list[tuple[int, int, float]] = []
    c = Coalescer(recorder(sent, fail=1, delay=0.02), linger_s=0.001, on_acked=lambda *a: told.append(a))
    with pytest.raises(ConnectionError):
        await asyncio.gather(submit(c, [ping("a", 1)]), submit(c, [ping("b", 1)]))
    assert told == []  # failed: its requests answer 503 and count themselves
    await asyncio.gather(submit(c, [ping("a", 2)]), submit(c, [ping("b", i) for i in range(2, 5)]))
    assert len(told) == 1
    requests, pings, seconds = told[0]
    assert (requests, pings) == (2, 4)
    assert 0.02 <= seconds < 1.0  # from the first request to the ack: linger + the send's 20 ms


def _minor_faults() -> int:
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def test_the_proxy_reuses_freed_flush_sized_buffers_instead_of_faulting_fresh_pages() -> None:
    """After ``keep_freed_memory``, flush-like buffers (1-400 KB, ~30 alive) made again and again fault no
    fresh pages in: by default glibc unmaps or trims them and every flush faults ~600 zeroed pages back."""
    from pipeline.ingest.app import keep_freed_memory

    assert keep_freed_memory()  # glibc here (and in CI)
    rng = random.Random(3)

    def flush() -> None:
        bufs = [bytes(rng.randrange(1_000, 400_000)) for _ in range(30)]  # records, batches, the request
        del bufs

    for _ in range(20):  # the first ones grow the heap to its high-water mark
        flush()
    before = _minor_faults()
    for _ in range(100):
        flush()
    assert _minor_faults() - before < 1_000  # ~60,000 without (measured)


@pytest.mark.parametrize("builder", ["c", "py"])
def test_a_flush_batch_is_byte_for_byte_aiokafkas_record_batch(builder: str) -> None:
    """``FlushBatch``'s bytes (built in C, SSE4.2 CRC32C) equal aiokafka's builder's, compiled and pure Python."""
    from aiokafka.record import default_records as dr

    from pipeline.ingest.record_batch import FlushBatch

    theirs_cls = dr.DefaultRecordBatchBuilder if builder == "c" else dr._DefaultRecordBatchBuilderPy
    rng = random.Random(4)
    cases = [[(b"", b"")], [(b"8731aa0bfffffff", b"x" * 127)], [(b"k", b"v" * 128), (b"k2", b"w" * 16_383)]]
    cases += [[(rng.randbytes(rng.randrange(20)), rng.randbytes(rng.choice((3, 200, 70_000)))) for _ in range(n)]
              for n in (1, 5, 130)]  # offset deltas past one varint byte
    for rows in cases:
        ours = FlushBatch(1 << 30)
        assert all(ours.append(key, value) for key, value in rows) and ours.record_count() == len(rows)
        ours._set_producer_state(2**40 + 7, 3, 2**31 - 9)
        built = ours._build()
        theirs = theirs_cls(2, 0, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=0,
                            batch_size=1 << 30)
        for offset, (key, value) in enumerate(rows):
            theirs.append(offset, ours._timestamp_ms, key=key, value=value, headers=[])
        theirs.set_producer_state(2**40 + 7, 3, 2**31 - 9)
        assert built == bytes(theirs.build())
        read = dr.DefaultRecordBatch(built)
        assert read.validate_crc() and [(r.key, r.value) for r in read] == rows
        assert ours._build() is built and ours.size() == len(built)  # a retry resends the same bytes


def test_a_flush_batch_stops_at_the_producers_batch_size_but_always_takes_a_first_record() -> None:
    from pipeline.ingest.record_batch import FlushBatch

    batch = FlushBatch(1_000)
    assert batch.append(b"k", b"v" * 500) and not batch.append(b"k", b"v" * 500) and batch.closed()
    assert not batch.append(b"k", b"")  # closed stays closed
    assert batch.record_count() == 1 and len(batch._build()) <= 1_000
    big = FlushBatch(1_000)
    assert big.append(b"k", b"v" * 5_000) and big.record_count() == 1  # as aiokafka: never an empty batch
