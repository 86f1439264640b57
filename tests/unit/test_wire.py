"""The C fast path (``wire.scan``) accepts only what the reference path accepts: same pings, keys, records."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import h3.api.basic_int as h3int
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from pipeline import geo, pings
from pipeline.ingest import _fastpings, wire
from pipeline.ingest.accept import sort_pings
from pipeline.ingest.body import BodyError, parse_json
from tests.contract.conftest import build_registry, load_schema_files
from tests.unit.test_accept import DEV, NOW, good, ping_like

KEYING = wire.Keying()
_schemas = load_schema_files()
RECORD_SCHEMA = Draft7Validator(_schemas["ping_record"], registry=build_registry(_schemas))


def reference(body: bytes) -> tuple[list[dict[str, Any]], list[tuple[int, str]], int | None] | None:
    """What the reference path makes of a body: None when it refuses the body as a whole."""
    try:
        doc = parse_json(body)
    except BodyError:
        return None
    if doc == [] or (isinstance(doc, list) and len(doc) > pings.MAX_BATCH):
        return None  # 400 / 413 there
    return sort_pings(doc if isinstance(doc, list) else [doc], DEV, NOW)


def canonical(p: dict[str, Any]) -> bytes:
    """A ping with its values' exact types and signs (orjson writes 1.0 and 1, 0.0 and -0.0 apart)."""
    return orjson.dumps(p, option=orjson.OPT_SORT_KEYS)


def by_key(accepted: list[dict[str, Any]]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for p in accepted:
        out.setdefault(geo.key_cell(p["lat"], p["lon"], 7, 9), []).append(canonical(p))
    return out


def fast(body: bytes, keying: wire.Keying = KEYING, schema: bool = False) -> dict[str, list[bytes]] | None:
    """The C path's pings per key, read back from records as the stream side reads them."""
    got = wire.scan(body, wire.device_json(DEV), NOW, keying)
    if got is None:
        return None
    count, groups = got
    out: dict[str, list[bytes]] = {}
    for key, n, fragment in groups:
        record = wire.encode_record(format(key, "x"), [fragment], NOW)
        if schema:  # jsonschema is slow: the property tests leave it to the deterministic ones
            RECORD_SCHEMA.validate(orjson.loads(record))
        cell, _, ps = pings.decode_record(record)
        assert cell == format(key, "x") and len(ps) == n <= keying.max_pings
        for p in ps:
            assert geo.key_cell(p["lat"], p["lon"], 7, 9) == cell
            assert p.pop("cell") == geo.cell(p["lat"], p["lon"], 9)  # the stream side's reading adds it
            out.setdefault(cell, []).append(canonical(p))
    assert sum(len(v) for v in out.values()) == count
    return out


def agrees(body: bytes, schema: bool = False) -> bool:
    """The property: the C path refuses, or accepts exactly what the reference accepts. True if it accepted."""
    got = fast(body, schema=schema)
    if got is None:
        return False
    want = reference(body)
    assert want is not None, body
    accepted, refused, foreign = want
    assert refused == [] and foreign is None, body
    assert got == by_key(accepted), body
    return True


def test_a_common_batch_and_a_single_ping_take_the_fast_path_with_the_device_id() -> None:
    items = [good(1), good(2, state="stopped"), good(3, ts=int(NOW), speed_mps=12, device_id=DEV), good(4, state=None)]
    body = orjson.dumps(items)
    assert agrees(body, schema=True) and agrees(orjson.dumps(good(9)), schema=True)
    assert agrees(b" \n[ %s ] \t" % orjson.dumps(good(5)))
    ((key, count, fragment),) = wire.scan(body, wire.device_json(DEV), NOW, KEYING)[1]
    got = orjson.loads(b"[%s]" % fragment)
    assert count == 4 and format(key, "x") == geo.key_cell(45.76, 4.83, 7, 9)
    assert got == [pings.validate_ping(p, DEV, NOW) for p in items]  # ints as floats, null state dropped
    assert [type(v) for v in got[2].values()] == [str, int, float, float, float, float, float, float]


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps([good(0), good(1, heading_deg=360.0)]),  # valid, but normalised to 0 by the reference path
        orjson.dumps([good(1, ts=NOW + 301)]),
        orjson.dumps([good(1, ts=NOW - pings.MAX_AGE_S - 1)]),
        orjson.dumps([good(1, device_id="other")]),  # 403 there
        orjson.dumps([good(1, device_id=None)]),  # a null device id is foreign too
        orjson.dumps([{**good(1), "seq": 1.0}]),
        orjson.dumps([good(-1)]),
        orjson.dumps([good(2**53)]),
        b'[{"seq":-0' + orjson.dumps(good(1))[8:] + b"]",  # a signed seq: the reference path reads it
        orjson.dumps([good(1, lat=True)]),
        orjson.dumps([good(1, lat=90.000001)]),
        orjson.dumps([good(1, speed_mps=-0.1)]),
        orjson.dumps([good(1, accuracy_m=100_000.5)]),
        orjson.dumps([good(1, state="flying")]),
        orjson.dumps([good(1, extra=1)]),  # an unknown key: dropped there
        orjson.dumps([{k: v for k, v in good(1).items() if k != "lon"}]),
        orjson.dumps([good(1)]).replace(b'"lat":45.76', b'"lat":45.76,"lat":45.76'),  # duplicate key
        orjson.dumps([good(1)]).replace(b'"lat"', b'"l\\u0061t"'),  # an escape
        orjson.dumps([good(1, state="stopped")]).replace(b'"stopped"', b'"st\\u006fpped"'),
        orjson.dumps([good(1)]).replace(b"45.76", b"4.576e400"),  # inf there
        orjson.dumps([good(1, device_id="dé")]),  # non-ASCII
        orjson.dumps([good(1)]) + b" x",
        orjson.dumps([good(1)])[:-1] + b",]",
        orjson.dumps([good(1)])[:-2],
        b"[]",
        orjson.dumps([good(i) for i in range(pings.MAX_BATCH + 1)]),  # 413 there
        b"[[]]",
        b'"x"',
        b"",
    ],
)
def test_anything_the_fast_path_does_not_take_whole_goes_to_the_reference_path(body: bytes) -> None:
    assert wire.scan(body, wire.device_json(DEV), NOW, KEYING) is None


def test_number_texts_are_kept_and_read_back_as_the_reference_reads_them() -> None:
    base = orjson.dumps(good(7))
    for text in (b"4.83", b"483e-2", b"0.483E+1", b"5", b"-0", b"-1", b"-7", b"-12", b"-0.0", b"1e-400",
                 b"4.8300000000000000000000001",
                 b"4.829999999999999893418589635984972119331359863281250", b"0", b"4." + b"8" * 10_000,
                 b"0." + b"0" * 10_000 + b"1", b"1" + b"0" * 400 + b"e-400"):
        body = base.replace(b'"lon":4.83', b'"lon":' + text)
        assert agrees(body, schema=True), text
    # a one-digit negative integer keeps its sign (only "-0" is written "0.0"): -5 and -1, not 5 and 1
    got = wire.scan(orjson.dumps(good(1, lat=-5, lon=-1, heading_deg=0)), wire.device_json(DEV), NOW, KEYING)
    assert got is not None and orjson.loads(got[1][0][2])["lat"] == -5.0 and orjson.loads(got[1][0][2])["lon"] == -1.0
    # a device id needing an escape never equals an unescaped body string: that body takes the reference path
    assert wire.scan(orjson.dumps(good(1)), wire.device_json('a"b'), NOW, KEYING) is not None
    assert wire.scan(orjson.dumps(good(1, device_id='a"b')), wire.device_json('a"b'), NOW, KEYING) is None


def test_groups_are_runs_of_one_key_in_order_and_capped_at_max_pings() -> None:
    far = {"lat": -33.86, "lon": 151.2}
    items = [good(i, **(far if 6 <= i < 9 or i == 14 else {})) for i in range(16)]
    groups = wire.scan(orjson.dumps(items), wire.device_json(DEV), NOW, wire.Keying(max_pings=4))[1]
    seqs = [(format(k, "x"), [p["seq"] for p in orjson.loads(b"[%s]" % f)]) for k, _, f in groups]
    near_key, far_key = geo.key_cell(45.76, 4.83, 7, 9), geo.key_cell(-33.86, 151.2, 7, 9)
    assert seqs == [
        (near_key, [0, 1, 2, 3]), (near_key, [4, 5]), (far_key, [6, 7, 8]), (near_key, [9, 10, 11, 12]),
        (near_key, [13]), (far_key, [14]), (near_key, [15]),
    ]
    # the reference path's pings are grouped the same way, into the same records
    ref = wire.group([pings.validate_ping(p, DEV, NOW) for p in items], wire.Keying(max_pings=4))
    assert [(k, n, orjson.loads(b"[%s]" % f)) for k, n, f in ref] == [
        (k, n, orjson.loads(b"[%s]" % f)) for k, n, f in groups
    ]


def test_keys_are_geo_key_cell_all_over_the_globe() -> None:
    import random

    rng = random.Random(6)
    items = [good(i, lat=rng.uniform(-90, 90), lon=rng.uniform(-180, 180)) for i in range(pings.MAX_BATCH)]
    for key_res, cell_res in ((7, 9), (5, 9), (9, 9), (0, 4)):
        keying = wire.Keying(key_res, cell_res)
        got = wire.scan(orjson.dumps(items), wire.device_json(DEV), NOW, keying)
        assert got is not None and got[0] == len(items)
        keys = [(p["seq"], format(k, "x")) for k, _, f in got[1] for p in orjson.loads(b"[%s]" % f)]
        assert sorted(keys) == [(p["seq"], geo.key_cell(p["lat"], p["lon"], key_res, cell_res)) for p in items]
    with pytest.raises(ValueError):
        wire.Keying(key_res=9, cell_res=7)


# -- generated bodies: valid, near-valid and broken, written the many ways JSON allows -----------
_WS = st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n  "])


def _exact_text(draw: st.DrawFn, value: float) -> str:
    """A JSON spelling of exactly this double: repr, an integer, exponents, long digit strings."""
    style = draw(st.integers(0, 5))
    if style == 0 and value == int(value) and abs(value) < 1e18:
        return str(int(value))  # an int for a float
    if style == 1:
        text = f"{value:.17e}"  # 4.83000000000000007e+00: 18 digits, read back to the same double
        return text.replace("e", "E") if draw(st.booleans()) else text.replace("e+0", "e").replace("e-0", "e-")
    if style == 2:
        return f"{value:.30f}"
    return json.dumps(value)


_FIELDS = ["seq", "ts", "lat", "lon", "speed_mps", "heading_deg", "accuracy_m"]
_VALID = {  # (lo, hi, hi excluded)
    "ts": (NOW - pings.MAX_AGE_S, NOW + pings.MAX_FUTURE_S, False), "lat": (-90.0, 90.0, False),
    "lon": (-180.0, 180.0, False), "speed_mps": (0.0, pings.MAX_SPEED_MPS, False),
    "heading_deg": (0.0, 360.0, True), "accuracy_m": (0.0, pings.MAX_ACCURACY_M, False),
}
_EDGES = ["-0", "0", "-0.0", "0e5", "1e400", "-1e400", "1e-400", "360", "360.0", "3.6e2", "90", "90.0000000000001",
          "-90.5", "180", "180.00000000000001", "1E2", "100000", "100000.00000000001", "-1e-400"]


@st.composite
def ping_text(draw: st.DrawFn) -> str:
    """A ping written by hand: varied spellings and whitespace, sometimes one thing wrong."""
    pairs: list[tuple[str, str]] = []
    seq = draw(st.integers(0, 2**53 - 1) | st.sampled_from([-1, 0, 2**53 - 1, 2**53]))
    odd_seq = st.sampled_from([f"{seq}.0", f"{seq}e0", "-0"])
    pairs.append(("seq", str(seq) if draw(st.integers(0, 7)) else draw(odd_seq)))
    for name in _FIELDS[1:]:
        lo, hi, open_hi = _VALID[name]
        if draw(st.integers(0, 24)) == 0:  # at or past an edge, or spelt as only JSON allows
            edge = draw(st.sampled_from([lo, hi]))
            text = draw(st.sampled_from(_EDGES)) if draw(st.booleans()) else _exact_text(draw, edge)
        else:
            value = draw(st.floats(lo, hi, exclude_max=open_hi) | st.integers(int(lo), int(hi) - 1).map(float))
            text = _exact_text(draw, value)
        pairs.append((name, text))
    if draw(st.booleans()):
        odd = ["null", '"flying"', '"Driving"', "1", '"driv\\u0069ng"']
        usual = st.sampled_from(['"driving"', '"stopped"', '"parked"'])
        pairs.append(("state", draw(usual) if draw(st.integers(0, 2)) else draw(st.sampled_from(odd))))
    if draw(st.integers(0, 3)) == 0:
        others = ['"other"', "null", '"dev-1 "', '"dév"', '"dev-\\u0031"']
        pairs.append(("device_id", f'"{DEV}"' if draw(st.booleans()) else draw(st.sampled_from(others))))
    roll = draw(st.integers(0, 9))
    if roll == 0:  # one thing wrong with the keys
        i = draw(st.integers(0, len(pairs) - 1))
        change = draw(st.sampled_from(["drop", "dup", "unknown", "escape", "case"]))
        if change == "drop":
            pairs.pop(i)
        elif change == "dup":
            pairs.insert(draw(st.integers(0, len(pairs))), pairs[i])
        elif change == "unknown":
            unknown = draw(st.sampled_from(["x", "sequence", "é", "lat "]))
            pairs.insert(i, (unknown, draw(st.sampled_from(["1", '"a"']))))
        elif change == "escape":
            pairs[i] = (pairs[i][0][0] + "\\u00" + format(ord(pairs[i][0][1]), "02x") + pairs[i][0][2:], pairs[i][1])
        else:
            pairs[i] = (pairs[i][0].upper(), pairs[i][1])
    elif roll == 1:  # a value of another type
        i = draw(st.integers(0, len(pairs) - 1))
        pairs[i] = (pairs[i][0], draw(st.sampled_from(["true", "null", '"1"', "[1]", "{}", "NaN", "Infinity", "01",
                                                        "1.", ".5", "+1", "-", "1e", "0x10"])))
    if draw(st.integers(0, 4)) == 0:
        pairs = draw(st.permutations(pairs))
    ws = _WS
    return "{" + ",".join(f'{draw(ws)}"{k}"{draw(ws)}:{draw(ws)}{v}{draw(ws)}' for k, v in pairs) + draw(ws) + "}"


@st.composite
def body_text(draw: st.DrawFn) -> bytes:
    items = draw(st.lists(ping_text(), min_size=1, max_size=5))
    ws = _WS
    text = draw(ws) + (items[0] if draw(st.integers(0, 3)) == 0 else
                       "[" + ",".join(draw(ws) + i + draw(ws) for i in items) + "]") + draw(ws)
    raw = text.encode()
    if draw(st.integers(0, 9)) == 0:  # junk: a byte changed, dropped or added
        i = draw(st.integers(0, len(raw) - 1))
        junk = draw(st.sampled_from([b"", b",", b"}", b"]", b'"', b"\\", b"\x00", b"\xff", b"\xc3\xa9", b" ", b"0"]))
        raw = raw[:i] + junk + raw[i + draw(st.integers(0, 1)):]
    return raw


@settings(max_examples=400, deadline=None)
@given(body_text())
def test_hand_written_bodies_are_refused_or_accepted_as_the_reference_accepts_them(body: bytes) -> None:
    agrees(body)


@settings(max_examples=400, deadline=None)
@given(st.lists(ping_like(), max_size=6), st.booleans(), st.booleans())
def test_generated_documents_are_refused_or_accepted_as_the_reference_accepts_them(
    items: list[Any], single: bool, ascii_only: bool
) -> None:
    doc = items[0] if single and items else items
    agrees(json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


def test_the_hand_written_bodies_often_take_the_fast_path() -> None:
    """The property above would hold for a path that refuses everything: this one accepts most valid bodies."""
    accepted = 0

    @settings(max_examples=100, deadline=None, database=None, derandomize=True)
    @given(body_text())
    def run(body: bytes) -> None:
        nonlocal accepted
        accepted += agrees(body)

    run()
    assert accepted >= 5


def test_records_join_fragments_as_pings_encode_record_writes_dicts() -> None:
    dicts = [pings.validate_ping(good(i, state="driving" if i % 2 else None), DEV, NOW) for i in range(5)]
    groups = wire.group(dicts, KEYING)
    ((key, _, fragment),) = groups
    cut = fragment.index(b"},") + 1  # two fragments of one record
    ours = wire.encode_record(format(key, "x"), [fragment[:cut], fragment[cut + 1 :]], NOW + 0.25)
    assert orjson.loads(ours) == orjson.loads(pings.encode_record(format(key, "x"), dicts, NOW + 0.25))
    cell, ingest_ts, back = pings.decode_record(ours)
    assert (cell, ingest_ts) == (format(key, "x"), NOW + 0.25)
    assert back == [{**p, "cell": geo.cell(p["lat"], p["lon"], 9)} for p in dicts]
    RECORD_SCHEMA.validate(orjson.loads(ours))


# -- H3 skipped for a ping inside the previous ping's cell: the cells stay exactly h3-py's -------
def _unit(lat: float, lon: float) -> tuple[float, float, float]:
    la, lo = math.radians(lat), math.radians(lon)
    return (math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la))


def _latlng(v: tuple[float, float, float]) -> tuple[float, float]:
    x, y, z = v
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))


def _toward(a: tuple[float, float, float], b: tuple[float, float, float], rad: float) -> tuple[float, float]:
    """The point ``rad`` radians from ``a`` on the great circle towards ``b`` (negative: away from it)."""
    d = sum(p * q for p, q in zip(a, b, strict=True))
    perp = [q - d * p for p, q in zip(a, b, strict=True)]
    norm = math.sqrt(sum(p * p for p in perp))
    return _latlng(tuple(math.cos(rad) * p + math.sin(rad) * q / norm for p, q in zip(a, perp, strict=True)))  # type: ignore[arg-type]


def _cells_of(points: list[tuple[float, float]], res: int) -> list[int]:
    """Each point's cell as the fast path keys it (key_res = cell_res: the key is the cell), in full batches."""
    out: list[int] = []
    for start in range(0, len(points), pings.MAX_BATCH):
        items = [good(i, lat=lat, lon=lon) for i, (lat, lon) in enumerate(points[start : start + pings.MAX_BATCH])]
        got = wire.scan(orjson.dumps(items), wire.device_json(DEV), NOW, wire.Keying(res, res))
        assert got is not None and got[0] == len(items)
        out += [key for key, n, _ in got[1] for _ in range(n)]
    return out


def _walk(rng: random.Random, lat: float, lon: float, n: int, step_m: float) -> list[tuple[float, float]]:
    out, heading = [], rng.uniform(0, 360)
    for _ in range(n):
        out.append((lat, lon))
        heading = (heading + rng.gauss(0, 20)) % 360
        lat, lon = geo.destination(lat, lon, heading, rng.uniform(0, step_m))
        lat, lon = max(-90.0, min(90.0, lat)), (lon + 180.0) % 360.0 - 180.0
    return out


# where H3 is irregular: the 12 pentagons and the vertices of the res-0 cells that span two faces
_PENTAGONS = [h3int.cell_to_latlng(c) for c in h3int.get_pentagons(0)]
_FACE_EDGES = [v for c in h3int.get_res0_cells() if len(h3int.get_icosahedron_faces(c)) > 1
               for v in h3int.cell_to_boundary(c)]


def test_walks_all_over_the_globe_get_h3s_cells_while_most_pings_skip_h3() -> None:
    rng = random.Random(11)
    before = _fastpings.cell_stats()
    for i in range(400):  # 200,000 pings: random places, around pentagons, across face edges
        res = (9, 9, 9, 7, 8, 10, 12, 5, 15)[i % 9]
        edge_m = h3int.average_hexagon_edge_length(res, "m")
        anchor = rng.choice((_PENTAGONS, _FACE_EDGES))[rng.randrange(12)] if i % 3 else (
            math.degrees(math.asin(rng.uniform(-1, 1))), rng.uniform(-180, 180))
        start = geo.destination(*anchor, rng.uniform(0, 360), rng.uniform(0, 4 * edge_m))
        points = _walk(rng, *start, pings.MAX_BATCH, rng.choice((0.1, 0.35, 1.0)) * edge_m)
        assert _cells_of(points, res) == [h3int.latlng_to_cell(lat, lon, res) for lat, lon in points]
    skipped, h3_calls, _ = (a - b for a, b in zip(_fastpings.cell_stats(), before, strict=True))
    assert skipped + h3_calls == 200_000 and skipped > 60_000
    # pings ~60 m apart in Berlin, keyed at (7, 9), as the bench sends them: two in three skip H3
    before = _fastpings.cell_stats()
    points = _walk(rng, 52.52, 13.405, pings.MAX_BATCH, 120.0)
    for _ in range(2):  # the second pass finds every cell's shape made
        items = [good(i, lat=lat, lon=lon) for i, (lat, lon) in enumerate(points)]
        got = wire.scan(orjson.dumps(items), wire.device_json(DEV), NOW, KEYING)
        assert got is not None
        assert [format(k, "x") for k, n, _ in got[1] for _ in range(n)] == [geo.key_cell(*p, 7, 9) for p in points]
    skipped, h3_calls, _ = (a - b for a, b in zip(_fastpings.cell_stats(), before, strict=True))
    assert skipped > 0.6 * (skipped + h3_calls)


@pytest.mark.parametrize("res", [9, 8, 3])
def test_points_a_hair_inside_or_outside_a_cells_edges_get_h3s_cell(res: int) -> None:
    """Probes 1 mm to 60 m inside and outside every edge of cells whose shape the fast path holds."""
    rng = random.Random(res)
    anchors = [(rng.uniform(-80, 80), rng.uniform(-180, 180)) for _ in range(20)] + _FACE_EDGES[:20] + _PENTAGONS
    for anchor in anchors:
        for cell in h3int.grid_disk(h3int.latlng_to_cell(*anchor, res), 1):
            centre = h3int.cell_to_latlng(cell)
            corners = [_unit(*v) for v in h3int.cell_to_boundary(cell)]
            inner = _unit(*centre)
            probes = [centre, centre]  # two pings in the cell: its shape is made
            for a, b in zip(corners, corners[1:] + corners[:1], strict=True):
                side = math.acos(min(1.0, sum(p * q for p, q in zip(a, b, strict=True))))
                for t in (0.001, 0.3, 0.5, 0.999):
                    on_edge = _unit(*_toward(a, b, t * side))
                    for rad in (1.6e-10, 1.9e-7, 2.1e-7, 1e-6, 1e-5):  # ~1 mm to ~60 m; after each, the centre again
                        probes += [_toward(on_edge, inner, rad), centre, _toward(on_edge, inner, -rad), centre]
            assert _cells_of(probes, res) == [h3int.latlng_to_cell(lat, lon, res) for lat, lon in probes]


def test_pentagons_and_cells_on_two_faces_are_always_keyed_by_h3() -> None:
    pentagon = h3int.get_pentagons(9)[3]
    bent = next(c for v in _FACE_EDGES for c in h3int.grid_disk(h3int.latlng_to_cell(*v, 9), 2)
                if len(h3int.get_icosahedron_faces(c)) > 1 and not h3int.is_pentagon(c))
    for cell in (pentagon, bent):
        points = [h3int.cell_to_latlng(cell)] * 5
        before = _fastpings.cell_stats()
        assert _cells_of(points, 9) == [cell] * 5
        skipped, h3_calls, _ = (a - b for a, b in zip(_fastpings.cell_stats(), before, strict=True))
        assert (skipped, h3_calls) == (0, 5)


def test_hinted_cells_are_h3s_whatever_the_hint() -> None:
    """cell_hinted (the stream side's decode: the hint is the device's previous cell) only ever confirms a hint."""
    rng = random.Random(5)
    before = _fastpings.cell_stats()
    total = 0
    for i in range(300):
        res = (9, 9, 9, 7, 12, 5)[i % 6]
        edge_m = h3int.average_hexagon_edge_length(res, "m")
        anchor = rng.choice((_PENTAGONS, _FACE_EDGES))[rng.randrange(12)] if i % 3 else (
            math.degrees(math.asin(rng.uniform(-1, 1))), rng.uniform(-180, 180))
        start = geo.destination(*anchor, rng.uniform(0, 360), rng.uniform(0, 4 * edge_m))
        hint = 0
        for lat, lon in _walk(rng, *start, 200, rng.choice((0.1, 0.35, 1.0)) * edge_m):
            truth = h3int.latlng_to_cell(lat, lon, res)
            # the previous cell (the usual hint), a neighbour, another resolution's cell, a far cell, none
            for h in (hint, h3int.grid_disk(hint, 1)[-1] if hint else 0, h3int.latlng_to_cell(lat, lon, 8), 0,
                      h3int.latlng_to_cell(-lat, lon, res)):
                assert _fastpings.cell_hinted(lat, lon, res, h) == truth
                total += 1
            hint = truth
    skipped, h3_calls, _ = (a - b for a, b in zip(_fastpings.cell_stats(), before, strict=True))
    assert skipped + h3_calls == total
    # a phone's pings ~60 m apart in Berlin, each hinted with the cell of the one before: most skip H3
    before = _fastpings.cell_stats()
    hint = 0
    for lat, lon in _walk(rng, 52.52, 13.405, 2000, 120.0):
        hint = _fastpings.cell_hinted(lat, lon, 9, hint)
        assert hint == h3int.latlng_to_cell(lat, lon, 9)
    skipped, h3_calls, _ = (a - b for a, b in zip(_fastpings.cell_stats(), before, strict=True))
    assert skipped > 0.5 * (skipped + h3_calls)


def test_probes_a_hair_inside_or_outside_a_hinted_cell_get_h3s_cell() -> None:
    rng = random.Random(3)
    for anchor in [(rng.uniform(-80, 80), rng.uniform(-180, 180)) for _ in range(10)] + _FACE_EDGES[:10]:
        for cell in h3int.grid_disk(h3int.latlng_to_cell(*anchor, 9), 1):
            centre = h3int.cell_to_latlng(cell)
            for _ in range(2):  # the second time H3 confirms the hint, its shape is made
                assert _fastpings.cell_hinted(*centre, 9, cell) == cell
            corners = [_unit(*v) for v in h3int.cell_to_boundary(cell)]
            inner = _unit(*centre)
            for a, b in zip(corners, corners[1:] + corners[:1], strict=True):
                side = math.acos(min(1.0, sum(p * q for p, q in zip(a, b, strict=True))))
                for t in (0.001, 0.5, 0.999):
                    on_edge = _unit(*_toward(a, b, t * side))
                    for rad in (1.6e-10, 1.9e-7, 2.1e-7, 1e-6, -1.6e-10, -2.1e-7, -1e-6):
                        lat, lon = _toward(on_edge, inner, rad)
                        assert _fastpings.cell_hinted(lat, lon, 9, cell) == h3int.latlng_to_cell(lat, lon, 9)
    pentagon = h3int.get_pentagons(9)[3]
    before = _fastpings.cell_stats()
    for _ in range(5):
        assert _fastpings.cell_hinted(*h3int.cell_to_latlng(pentagon), 9, pentagon) == pentagon
    skipped, h3_calls, _ = (a - b for a, b in zip(_fastpings.cell_stats(), before, strict=True))
    assert (skipped, h3_calls) == (0, 5)


def _hinted_stats(cells: list[int]) -> tuple[int, int, int]:
    """(skipped, H3 calls, shapes made) for each cell's centre hinted with the cell, all H3's cell."""
    before = _fastpings.cell_stats()
    for cell in cells:
        assert _fastpings.cell_hinted(*h3int.cell_to_latlng(cell), 9, cell) == cell
    skipped, h3_calls, made = (a - b for a, b in zip(_fastpings.cell_stats(), before, strict=True))
    return skipped, h3_calls, made


def test_a_citys_cells_keep_their_shapes() -> None:
    """8,269 cells of Berlin, each made once: a second pass confirms every one without H3 or h3-py.

    A table that drops a cell when its slots collide (as the two-way one did) remakes shapes
    every few pings for the cells that share slots."""
    cells = h3int.grid_disk(h3int.latlng_to_cell(52.52, 13.405, 9), 52)
    _hinted_stats(cells)  # each shape made (or already held)
    assert _hinted_stats(cells) == (len(cells), 0, 0)


def test_the_shape_table_holds_over_a_hundred_thousand_cells_then_starts_again() -> None:
    """Cells are kept up to the table's cap (131,072), then the table is emptied and refilled: still H3's cells."""
    centre = h3int.latlng_to_cell(-33.9, 18.6, 9)
    cells = h3int.grid_disk(centre, 199)  # 119,401 cells
    _hinted_stats(cells)  # the table may be emptied on the way (earlier tests' cells): then it holds some of these
    _hinted_stats(cells)  # the rest: the table holds at most these, fewer than its cap
    assert _hinted_stats(cells) == (len(cells), 0, 0)
    more = h3int.grid_ring(centre, 215) + h3int.grid_ring(centre, 216)  # 2,586 cells
    far = h3int.grid_disk(h3int.latlng_to_cell(-20.0, 50.0, 9), 60)  # 10,981: the cap passed
    _hinted_stats(more + far)
    assert _hinted_stats(far[-1000:]) == (1000, 0, 0)  # made after the table was emptied
    skipped, h3_calls, made = _hinted_stats(cells)
    assert skipped + h3_calls == len(cells) and made > 0  # emptied: the old cells' shapes made again

