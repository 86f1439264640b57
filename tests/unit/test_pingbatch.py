"""pipeline/_pingbatch.c (a ping record read into C structs) against ``pings.decode_record``.

``decode_batch`` must give what ``decode_record`` gives — the same cell and ingest time, and
pings whose dicts have the same keys in the same order, the same values *and* types (an int
stays an int, every double bit-equal) — or raise the same RecordError. Records are generated
both ways our ingest writes them (``wire.encode_record`` of ``_fastpings`` fragments, and
``pings.encode_record`` of dicts), then spelt oddly or broken. An engine fed batches must end
as one fed dicts.
"""

from __future__ import annotations

import gc
import json
import math
import random
import sys
import tracemalloc
from operator import itemgetter
from typing import Any

import h3.api.basic_int as h3int
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline import _movers, _window, geo, pings
from pipeline._records import PingBatch, cell_stats, parse_batch
from pipeline.detect import motion
from pipeline.detect.stall import StallState
from pipeline.engine import Engine, Tables
from pipeline.ingest import wire
from pipeline.pings import RecordError
from tests.unit.test_movers import Counting, _fields, _partition, _published, _state, _traffic
from tests.unit.test_wire import _toward, _unit

NOW = 1_700_000_000.0
KEY = "871f1d489ffffff"


def outcome(decode: Any, raw: bytes | None) -> tuple[Any, ...]:
    """What a decoder gives, comparable: every ping's items with their types (repr keeps 1 vs 1.0, -0.0)."""
    try:
        cell, ingest_ts, got = decode(raw)
    except RecordError as exc:
        return ("error", str(exc))
    return ("ok", cell, repr(ingest_ts), [repr(list(p.items())) for p in got])


def agrees(raw: bytes | None) -> bool:
    """decode_batch gives decode_record's outcome; True when it took the fast path."""
    want = outcome(pings.decode_record, raw)
    assert outcome(pings.decode_batch, raw) == want
    fast = raw is not None and parse_batch(raw, 9) is not None
    if fast:
        assert want[0] == "ok"  # the fast path only ever accepts
    return fast


# -- generated records ------------------------------------------------------------------------
_DEVICES = ["d0", "d1", "phone-42", "", "x" * 40, "a b", "a'b"]
_RANGES = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0), "speed_mps": (0.0, 90.0), "heading_deg": (0.0, 360.0)}


@st.composite
def number(draw: st.DrawFn, lo: float, hi: float) -> float | int:
    """A value in [lo, hi] (sometimes its edge): a float, or an int as JSON writes one."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([lo, hi, int(lo), int(hi), -0.0, 0]))
    if draw(st.integers(0, 4)) == 0:
        return draw(st.integers(int(lo), int(hi)))
    return draw(st.floats(lo, hi))


@st.composite
def ping(draw: st.DrawFn) -> dict[str, Any]:
    """A ping dict with its keys in some order: mostly valid, sometimes out of range or mistyped."""
    p: dict[str, Any] = {
        "device_id": draw(st.sampled_from(_DEVICES)),
        "seq": draw(st.integers(0, 2**53 - 1) | st.sampled_from([-5, 0, 2**53 - 1])),
        "ts": draw(number(NOW - 100, NOW + 100) | st.floats(allow_nan=False, allow_infinity=False)),
        **{k: draw(number(lo, hi)) for k, (lo, hi) in _RANGES.items()},
        "accuracy_m": draw(number(0.0, 100.0) | st.floats(allow_nan=False, allow_infinity=False)),
    }
    if draw(st.booleans()):
        p["state"] = draw(st.sampled_from(["driving", "stopped", "parked"]))
    roll = draw(st.integers(0, 14))
    if roll == 0:  # out of a range check_pings checks
        name = draw(st.sampled_from(list(_RANGES)))
        lo, hi = _RANGES[name]
        p[name] = draw(
            st.sampled_from(
                [
                    math.nextafter(hi, 1e300),
                    math.nextafter(lo, -1e300),
                    hi + 0.5,
                    lo - 0.5,
                    361.0,
                    1e300,
                    -1e300,
                    2**53,
                    -(2**60),
                ]
            )
        )
    elif roll == 1:  # a value of another type, or a big int
        name = draw(st.sampled_from(list(p)))
        p[name] = draw(st.sampled_from([None, True, False, "1", [1], {}, 2**53, 2**64, -(2**63), 1.5, "parked"]))
    elif roll == 2:  # a key missing, or one more
        if draw(st.booleans()):
            p.pop(draw(st.sampled_from(list(p))))
        else:
            p[draw(st.sampled_from(["cell", "x", "Seq", "státe"]))] = 1
    if draw(st.booleans()):
        p = dict(draw(st.permutations(list(p.items()))))
    return p


def fragments(items: list[dict[str, Any]]) -> list[bytes] | None:
    """The pings as ``_fastpings.scan`` writes them into records (one body per device), or None if it refuses."""
    out: list[bytes] = []
    for p in items:
        body = {k: v for k, v in p.items() if k != "device_id"}
        if not isinstance(p.get("device_id"), str):
            return None
        try:
            got = wire.scan(orjson.dumps(body), wire.device_json(p["device_id"]), NOW, wire.Keying())
        except TypeError:  # an int orjson does not write
            return None
        if got is None:
            return None
        out.extend(fragment for _, _, fragment in got[1])
    return out


_CELL = b'"cell":"%s"' % KEY.encode()
_TOP_CHANGES = [
    (b'"v":1', b'"v":1.0'),
    (b'"v":1', b'"v":2'),
    (b'"v":1', b'"v":true'),
    (b'"v":1', b'"v":-0'),
    (_CELL, b'"cell":null'),
    (_CELL, b'"cell":"a\\"b"'),
    (_CELL, b'"cell":"\xc3\xa9"'),
    (_CELL, b'"cell":""'),
    (b'"ingest_ts":', b'"ingest_ts":"1"'),
    (b'"ingest_ts":', b'"ingest_ts":1'),
    (b'"pings":', b'"x":1,"pings":'),
]
_WS = [b" ", b"\n", b"\t", b"\r\n "]
_JUNK = [b"", b",", b"}", b"]", b'"', b"\\", b"\x00", b"\xff", b"\xc3\xa9", b"0", b"null", b"[", b"{"]


@st.composite
def record(draw: st.DrawFn) -> bytes:
    items = draw(st.lists(ping(), min_size=1, max_size=6))
    ingest_ts = draw(st.sampled_from([NOW, NOW + 0.125, int(NOW), 0, -0.0]))
    frags = fragments(items) if draw(st.booleans()) else None
    if frags is not None:
        raw = wire.encode_record(KEY, frags, float(ingest_ts))
    else:
        try:
            raw = pings.encode_record(KEY, items, ingest_ts)
        except TypeError:  # an int orjson does not write
            raw = pings.encode_record(KEY, items[:0], ingest_ts)
    roll = draw(st.integers(0, 11))
    if roll == 0:  # whitespace between tokens (and at the ends)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(
                st.sampled_from([j for j in range(len(raw) + 1) if j in (0, len(raw)) or raw[j - 1 : j] in b",:{}[]"])
            )
            raw = raw[:i] + draw(st.sampled_from(_WS)) + raw[i:]
    elif roll == 1:  # a byte changed, dropped or added
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + draw(st.sampled_from(_JUNK)) + raw[i + draw(st.integers(0, 1)) :]
    elif roll == 2:  # truncated
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif roll == 3:  # a number spelt another way JSON allows (or does not)
        texts = [t for t in _number_texts(raw)]
        if texts:
            old = draw(st.sampled_from(texts))
            new = draw(st.sampled_from(_respell(old)))
            raw = raw.replace(old, new, 1)
    elif roll == 4:  # a string with an escape, or non-ASCII
        raw = raw.replace(b'"seq"', draw(st.sampled_from([b'"s\\u0065q"', b'"s\xc3\xa9q"'])), 1)
    elif roll == 5:  # the top level changed
        old, new = draw(st.sampled_from(_TOP_CHANGES))
        raw = raw.replace(old, new, 1)
    elif roll == 6:
        raw = draw(
            st.sampled_from(
                [
                    b'{"v":1,"cell":"c","ingest_ts":1,"pings":[]}',
                    b"[]",
                    b"null",
                    b"",
                    b'{"v":1,"cell":"c","ingest_ts":1,"pings":{}}',
                    b'{"v":1}',
                    b"{}",
                    b'{"v":1,"cell":"c","ingest_ts":true,"pings":[{}]}',
                ]
            )
        )
    elif roll == 7:  # the top keys in another order, or one twice
        top = orjson.loads(raw) if _is_json(raw) else None
        if isinstance(top, dict) and "pings" in top:
            keys = draw(st.permutations(list(top)))
            body = b",".join(b'"%s":%s' % (k.encode(), _raw_value(raw, k)) for k in keys)
            if draw(st.booleans()):
                body += b',"ingest_ts":5'
            raw = b"{" + body + b"}"
    return raw


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def _raw_value(raw: bytes, key: str) -> bytes:
    return orjson.dumps(orjson.loads(raw)[key])


def _number_texts(raw: bytes) -> list[bytes]:
    out = []
    for part in raw.replace(b"}", b",").replace(b"]", b",").split(b","):
        _, _, value = part.rpartition(b":")
        if value[:1].isdigit() or value[:1] == b"-":
            out.append(b":" + value)
    return out


def _respell(old: bytes) -> list[bytes]:
    """Other spellings of a JSON number (the same value or not): exponents, long digit strings, junk."""
    v = float(old[1:])
    return [
        b":" + t.encode()
        for t in (
            f"{v:.17e}",
            f"{v:.17E}",
            f"{v:.30f}",
            f"{v:.25g}",
            f"{v}e0",
            f"{v:.3f}",
            f"{v}00000000000000000000001",
            "1e400",
            "-1e400",
            "1e-400",
            "-0",
            "01",
            "1.",
            ".5",
            "+1",
            "NaN",
            str(2**53),
            str(2**64),
            "9" * 30,
            f"{v:.16e}",
            f"{v:.20e}",
            json.dumps(v),
        )
    ]


@settings(max_examples=1500, deadline=None)
@given(record())
@example(
    b'{"v":1,"cell":"c","ingest_ts":1,"pings":[{"device_id":"d","seq":-0,"ts":-0,"lat":-0,"lon":-0.0,'
    b'"speed_mps":0,"heading_deg":360,"accuracy_m":-0}]}'
)
@example(
    b'{"v":1,"cell":"c","ingest_ts":1,"pings":[{"device_id":"d","seq":1,"ts":1,"lat":1,"lon":1,'
    b'"speed_mps":0,"heading_deg":360,"accuracy_m":1,"state":null}]}'
)
@example(
    b'{"v":1,"cell":"c","ingest_ts":1,"pings":[{"device_id":"d","seq":9007199254740992,"ts":1,"lat":1,'
    b'"lon":1,"speed_mps":0,"heading_deg":0,"accuracy_m":1}]}'
)
def test_records_decode_as_decode_record_decodes_them(raw: bytes) -> None:
    agrees(raw)


def test_none_and_non_bytes_go_the_reference_way() -> None:
    assert outcome(pings.decode_batch, None) == ("error", "empty record")
    assert parse_batch(bytearray(b"{}"), 9) is None  # type: ignore[arg-type]


def _good(n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        p = {
            "device_id": f"dev-{rng.randrange(50)}",
            "seq": rng.randrange(2**53),
            "ts": NOW + rng.uniform(-60, 0),
            "lat": rng.uniform(-90, 90),
            "lon": rng.uniform(-180, 180),
            "speed_mps": rng.uniform(0, 90),
            "heading_deg": rng.uniform(0, 360),
            "accuracy_m": rng.uniform(0, 50),
        }
        if i % 3 == 0:
            p["state"] = rng.choice(["driving", "stopped", "parked"])
        if i % 4 == 0:
            p["speed_mps"] = rng.randrange(90)
        out.append(p)
    return out


def test_our_ingests_records_take_the_fast_path() -> None:
    """Both encodings, random doubles (17 significant digits: the long double path) and ints: ~all fast."""
    rng = random.Random(7)
    fast = total = 0
    for _ in range(300):
        items = _good(rng.randint(1, 40), rng)
        frags = fragments([{**p, "heading_deg": min(p["heading_deg"], 359.9)} for p in items])
        assert frags is not None
        for raw in (pings.encode_record(KEY, items, NOW), wire.encode_record(KEY, frags, NOW)):
            fast += agrees(raw)
            total += 1
    assert fast >= 0.99 * total, (fast, total)


@settings(max_examples=3000, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False), style=st.integers(0, 6))
def test_numbers_read_as_orjson_reads_them_bit_for_bit(value: float, style: int) -> None:
    """ts and accuracy_m are unchecked: any double, in any spelling, is orjson's double or the reference path."""
    text = [
        repr(value),
        f"{value:.17e}",
        f"{value:.16e}",
        f"{value:.15g}",
        f"{value:.19g}",
        f"{value:.20f}",
        json.dumps(value),
    ][style]
    if text in ("inf", "-inf", "nan"):
        return
    raw = (
        b'{"v":1,"cell":"c","ingest_ts":%s,"pings":[{"device_id":"d","seq":1,"ts":%s,"lat":0,"lon":0,'
        b'"speed_mps":0,"heading_deg":0,"accuracy_m":%s}]}'
    ) % ((text.encode(),) * 3)
    agrees(raw)


def test_a_ping_is_one_dict_made_when_asked_for() -> None:
    raw = pings.encode_record(KEY, _good(5, random.Random(1)), NOW)
    _, _, batch = pings.decode_batch(raw)
    assert isinstance(batch, PingBatch) and len(batch) == 5
    assert batch[0] is batch[0] and batch[-1] is batch[4]
    assert list(batch) == [batch[i] for i in range(5)]
    with pytest.raises(IndexError):
        batch[5]
    with pytest.raises(TypeError):
        PingBatch()  # type: ignore[call-arg]
    # the device and cell strs are check_pings' objects: the engine's dicts find them by identity
    _, _, ref = pings.decode_record(raw)
    assert all(a["device_id"] is b["device_id"] and a["cell"] is b["cell"] for a, b in zip(batch, ref, strict=True))


def test_device_ids_stay_the_caches_objects_past_a_grown_table_and_a_cleared_cache() -> None:
    """Enough distinct devices to grow the by-bytes table many times and pass the cache's bound (200,000)."""
    rng = random.Random(11)
    for r in range(420):
        items = _good(500, rng)
        for i, p in enumerate(items):
            p["device_id"] = f"many-{r}-{i}"
        raw = pings.encode_record(KEY, items, NOW)
        _, _, batch = pings.decode_batch(raw)
        assert isinstance(batch, PingBatch)
        if r % 20 == 0 or r > 390:  # the clear comes near 400 x 500 (earlier tests' devices count too)
            _, _, ref = pings.decode_record(raw)
            assert list(batch) == ref  # a clear half way through gives some other (equal) objects
            again = pings.decode_batch(raw)[2]
            assert all(a["device_id"] is b["device_id"] for a, b in zip(again, ref, strict=True))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([1, 2, 2.0, 3.5, -0.0, 0, 1e9, 2.5]), min_size=1, max_size=30))
def test_sorted_by_ts_is_sorteds_stable_order(tss: list[float]) -> None:
    items = [
        {
            "device_id": f"d{i}",
            "seq": i,
            "ts": ts,
            "lat": 1.0,
            "lon": 2.0,
            "speed_mps": 3.0,
            "heading_deg": 4.0,
            "accuracy_m": 5.0,
        }
        for i, ts in enumerate(tss)
    ]
    raw = pings.encode_record(KEY, items, NOW)
    _, _, batch = pings.decode_batch(raw)
    assert isinstance(batch, PingBatch)
    want = [repr(list(p.items())) for p in sorted(pings.decode_record(raw)[2], key=itemgetter("ts"))]
    assert [repr(list(p.items())) for p in batch.sorted_by_ts()] == want


# -- the consumers ----------------------------------------------------------------------------
def _raw(batch: list[dict[str, Any]], now: float) -> bytes:
    return pings.encode_record(KEY, [{k: v for k, v in p.items() if k != "cell"} for p in batch], now)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_engine_fed_batches_ends_as_one_fed_dicts(seed: int) -> None:
    """Outputs, tables, the movers' state (values and types) equal; most pings glided in C from the structs."""
    b_tables, d_tables = Tables.in_memory(), Tables.in_memory()
    b_eng, d_eng = Engine(b_tables), Engine(d_tables)
    assert b_eng.movers is not None
    counting = Counting(b_eng.movers)
    b_eng.movers = counting  # type: ignore[assignment]
    records = _traffic(seed)
    fast = total = 0
    before = cell_stats()
    for n, (now, batch) in enumerate(records):
        raw = _raw(batch, now)
        part = _partition(geo.parent(batch[0]["cell"], 7))
        _, _, as_batch = pings.decode_batch(raw)
        fast += isinstance(as_batch, PingBatch)
        total += len(as_batch)
        a = b_eng.on_pings(as_batch, part, now)
        b = d_eng.on_pings(pings.decode_record(raw)[2], part, now)
        assert _published(a) == _published(b)
        assert b_eng.flush(part, now) >= 0 and d_eng.flush(part, now) >= 0
        assert vars(b_tables) == vars(d_tables)
        if n % 5 == 0:
            assert _published(b_eng.tick(now)) == _published(d_eng.tick(now))
            assert _state(b_eng) == _state(d_eng)
    assert _state(b_eng) == _state(d_eng)
    assert d_eng.spots.history, "the traffic never stopped: the loop's dicts were not exercised"
    assert fast == len(records)
    # most cells were the device's last one, confirmed without H3 (pipeline/ingest/_h3skip.c)
    hinted, by_h3, _ = (a - b for a, b in zip(cell_stats(), before, strict=True))
    assert hinted + by_h3 == total and hinted > 0.5 * total, (hinted, by_h3)
    assert 0.3 * total < counting.taken < 0.95 * total, (counting.taken, total)


def test_add_pings_counts_a_batch_as_its_dicts() -> None:
    rng = random.Random(3)
    items = _good(200, rng)
    for p in items[::7]:
        p["seq"] = 3  # duplicates
    raw = pings.encode_record(KEY, items, NOW)
    results = []
    for batch in (pings.decode_batch(raw)[2], pings.decode_record(raw)[2]):
        windows: dict[str, Any] = {}
        touched: set[str] = set()
        wake: set[str] = set()
        dup = _window.add_pings(batch, windows, lambda c, p: _window.CellSpeedWindow(), 0, NOW, touched, wake)
        results.append((dup, {c: w.to_bytes() for c, w in windows.items()}, touched, wake))
    assert results[0] == results[1] and results[0][1]
    with pytest.raises(TypeError):
        _window.add_pings((), {}, print, 0, NOW, set(), set())  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(st.one_of(st.integers(0, 80), st.floats(0.0, 80.0)), min_size=5, max_size=5),
    dt=st.sampled_from([0, 1, 5, 5.0, 2.5, 16]),
)
def test_glide_reads_a_batch_as_its_dicts(values: list[float], dt: float) -> None:
    """Taken or refused alike, the stored device bit-equal after, every field's int-ness included."""
    ts0, lat, lon, speed, heading = values
    p = {
        "device_id": "d",
        "seq": 2,
        "ts": ts0 + dt,
        "lat": lat,
        "lon": lon,
        "speed_mps": speed,
        "heading_deg": heading,
        "accuracy_m": 5.0,
    }
    raw = pings.encode_record(KEY, [p], NOW)
    got = []
    for batch in (pings.decode_batch(raw)[2], pings.decode_record(raw)[2]):
        store = _movers.Store()
        first = {**p, "seq": 1, "ts": ts0, "speed_mps": 10.0}
        assert store.put("d", "k", "k|d", StallState(motion.seed(first, NOW)), 0)
        taken = store.glide(batch, 0, NOW, {batch[0]["cell"]: "k"}, {}, {})
        back = store.take("d", "k")
        assert back is not None
        got.append((taken, _fields(back)))
    assert got[0] == got[1]


def test_decoding_and_using_batches_leaks_nothing() -> None:
    rng = random.Random(5)
    raws = [pings.encode_record(KEY, _good(30, rng), NOW) for _ in range(20)]
    dev = pings.decode_record(raws[0])[2][0]["device_id"]  # the cache's object
    cell = pings.decode_record(raws[0])[2][0]["cell"]
    store = _movers.Store()
    parents: dict[str, str] = {}
    for raw in raws:
        for p in pings.decode_record(raw)[2]:
            parents[p["cell"]] = "k"
            first = {**p, "ts": p["ts"] - 5 if p["seq"] % 2 else p["ts"] + 5}  # half glide, half refused
            store.put(p["device_id"], "k", "k|" + p["device_id"], StallState(motion.seed(first, NOW)), 0)

    def rounds(n: int) -> None:
        for _ in range(n):
            for raw in raws:
                _, _, batch = pings.decode_batch(raw)
                assert isinstance(batch, PingBatch)
                ordered = batch.sorted_by_ts()
                list(ordered)
                windows: dict[str, Any] = {}
                _window.add_pings(ordered, windows, lambda c, p: _window.CellSpeedWindow(), 0, NOW, set(), set())
                i = 0
                while i < len(ordered):
                    i = store.glide(ordered, i, NOW, parents, {}, {}) + 1
                parse_batch(raw[:-1], 9)  # refused half way

    rounds(1)
    gc.collect()
    refs = sys.getrefcount(dev), sys.getrefcount(cell)
    tracemalloc.start()
    try:
        rounds(2)
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        rounds(30)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 20_000, grown  # 30 x 600 pings: a leaked dict or str a ping would be MBs
    assert (sys.getrefcount(dev), sys.getrefcount(cell)) == refs


def test_a_citys_devices_each_in_its_own_cell_find_every_cell_held() -> None:
    """8,269 devices, one in each cell of Berlin: from the third record each cell is confirmed, no shape made again.

    The decode keeps every cell shape it made (pipeline/ingest/_h3skip.c): a table that drops a
    cell when its slots collide makes shapes again, in Python, in steady state."""
    cells = h3int.grid_disk(h3int.latlng_to_cell(52.52, 13.405, 9), 52)
    items = []
    for i, cell in enumerate(cells):
        lat, lon = h3int.cell_to_latlng(cell)
        items.append({"device_id": f"city-{i}", "seq": 1, "ts": NOW, "lat": lat, "lon": lon,
                      "speed_mps": 1.0, "heading_deg": 2.0, "accuracy_m": 3.0})
    records = [pings.encode_record(KEY, items[i:i + 64], NOW) for i in range(0, len(items), 64)]
    stats = []
    for _ in range(3):  # the first gives each device its cell, the second makes the cell's shape
        before = cell_stats()
        batches = [parse_batch(raw, 9) for raw in records]
        stats.append(tuple(a - b for a, b in zip(cell_stats(), before, strict=True)))
        assert [p["cell"] for got in batches if got is not None for p in got[2]] == [h3int.int_to_str(c) for c in cells]
    assert stats[2] == (len(cells), 0, 0)


def _across_edges(cell: int) -> list[tuple[float, float]]:
    """Points a hair to far (1 mm to 60 m) either side of each of cell's edges, at three places along it."""
    corners = [_unit(*v) for v in h3int.cell_to_boundary(cell)]
    inner = _unit(*h3int.cell_to_latlng(cell))
    out = []
    for a, b in zip(corners, corners[1:] + corners[:1], strict=True):
        side = math.acos(min(1.0, sum(p * q for p, q in zip(a, b, strict=True))))
        for t in (0.001, 0.999, 0.5):
            on_edge = _unit(*_toward(a, b, t * side))
            out += [_toward(on_edge, inner, rad) for rad in (1.6e-10, 1.9e-7, 2.1e-7, 1e-5)]
            out += [_toward(on_edge, inner, -rad) for rad in (1.6e-10, 1.9e-7, 2.1e-7, 1e-6, 1e-5)]
    return out


@pytest.mark.parametrize("res", [9, 8, 10])
@pytest.mark.parametrize("anchor", [(52.52, 13.405), (-33.9, 18.6), (64.7, -10.6)])
def test_a_devices_pings_a_hair_either_side_of_its_cells_edges_get_h3s_cell(
    anchor: tuple[float, float], res: int
) -> None:
    """One device, from its cell's centre to probes 1 mm to 60 m either side of the cell's edges and back.

    Each probe is hinted with the centre's cell (the device's last), confirmed by the cell's shape
    when surely inside it, else H3: always H3's cell."""
    items = []
    for cell in h3int.grid_disk(h3int.latlng_to_cell(*anchor, res), 1):
        centre = h3int.cell_to_latlng(cell)
        points = [centre] * 3  # the shape made
        for probe in _across_edges(cell):
            points += [probe, centre]
        items += [{"device_id": f"edge-{res}", "seq": len(items) + i, "ts": NOW, "lat": lat, "lon": lon,
                   "speed_mps": 1.0, "heading_deg": 2.0, "accuracy_m": 3.0} for i, (lat, lon) in enumerate(points)]
    before = cell_stats()
    got = []
    for i in range(0, len(items), 64):
        batch = parse_batch(pings.encode_record(KEY, items[i:i + 64], NOW), res)
        assert batch is not None
        got += [p["cell"] for p in batch[2]]
    assert got == [h3int.int_to_str(h3int.latlng_to_cell(p["lat"], p["lon"], res)) for p in items]
    skipped, by_h3, _ = (a - b for a, b in zip(cell_stats(), before, strict=True))
    assert skipped > 0.25 * len(items), (skipped, by_h3)  # the probes well inside, the centres after them
