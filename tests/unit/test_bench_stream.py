"""The stream benchmark's input must look like the ingest proxy's records, or its numbers mean nothing."""

from __future__ import annotations

import time

from aiokafka.partitioner import DefaultPartitioner

from pipeline import geo, pings
from pipeline.bench.stream import CELL_RES, KEY_RES, City, Markers, Packer, Produced, _pct

PARTS = list(range(8))


def _partition(key: str) -> int:
    return int(DefaultPartitioner()(key.encode(), PARTS, PARTS))


def _records(city: City, steps: int, size: int) -> list[tuple[bytes, bytes, int]]:
    packer, out = Packer(city, size), []
    for i in range(steps):
        out.extend(r for p in city.step(city.cars, time.time() - 60 + i * 3, 3.0) if (r := packer.add(p)) is not None)
    out.extend(packer.drain())
    return out


def test_records_are_keyed_like_the_ingest_proxy_and_stay_on_one_partition() -> None:
    city = City.build(devices=2000, partitions=len(PARTS), seed=3)
    recs = _records(city, steps=5, size=64)
    assert sum(n for _, _, n in recs) == 10_000
    parts_used = set()
    for key, value, n in recs:
        cell, _, batch = pings.decode_record(value)
        assert cell == key.decode() and len(batch) == n <= 64
        part = _partition(cell)
        parts_used.add(part)
        # every ping's own key hashes to the record's partition, so its res-9 state lives there
        assert {_partition(geo.key_cell(p["lat"], p["lon"], KEY_RES, CELL_RES)) for p in batch} == {part}
        assert cell in {geo.key_cell(p["lat"], p["lon"], KEY_RES, CELL_RES) for p in batch}
    assert parts_used == set(PARTS)  # the city spreads over every partition
    assert sum(n for *_, n in recs) / len(recs) > 50  # multi-ping records, not one per ping


def test_traffic_is_plausible_and_seq_increases_per_device() -> None:
    city = City.build(devices=500, partitions=len(PARTS), seed=4)
    last: dict[str, tuple[int, float]] = {}
    now = time.time()
    for i in range(4):
        for p in city.step(city.cars, now + i * 3, 3.0):
            assert pings.validate_ping({k: v for k, v in p.items() if k != "device_id"}, p["device_id"], now) == p
            prev = last.get(p["device_id"])
            if prev is not None:
                assert p["seq"] == prev[0] + 1 and p["ts"] > prev[1]
            last[p["device_id"]] = (p["seq"], p["ts"])
            assert geo.distance_m(p["lat"], p["lon"], 52.52, 13.405) < 25_000  # around Berlin
    assert len(last) == 500


def test_committed_offsets_convert_to_pings() -> None:
    data = Produced()
    for off, n in enumerate([64, 64, 10]):
        data.note(0, 100 + off, n)
    data.note(1, 7, 50)
    assert data.pings == 188
    assert data.pings_below({}) == 0
    assert data.pings_below({0: 100}) == 0  # committed = next offset to read
    assert data.pings_below({0: 102, 1: 8}) == 128 + 50
    assert data.pings_below({0: 500, 1: 500}) == 188


def test_marker_bursts_use_fresh_cells_with_k_devices() -> None:
    m = Markers(k=3)
    cells = set()
    for _ in range(50):
        cell, key, value = m.burst()
        assert cell not in cells
        cells.add(cell)
        _, _, batch = pings.decode_record(value)
        assert len({p["device_id"] for p in batch}) == 3
        assert {geo.cell(p["lat"], p["lon"], CELL_RES) for p in batch} == {cell}
        assert key.decode() == geo.parent(cell, KEY_RES)


def test_percentile() -> None:
    values = [float(i) for i in range(1, 101)]
    assert _pct(values, 0.99) == 99.0
    assert _pct(values, 0.5) == 50.0
    assert _pct([3.0], 0.99) == 3.0
