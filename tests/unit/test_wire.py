"""The msgspec fast path accepts only what the reference path accepts, with the same pings and records."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import geo, pings
from pipeline.ingest import wire
from pipeline.ingest.accept import sort_pings
from pipeline.ingest.body import BodyError, parse_json
from tests.unit.test_accept import DEV, NOW, good, ping_like


def reference(body: bytes) -> tuple[list[dict[str, Any]], list[tuple[int, str]], int | None] | None:
    """What the reference path makes of a body: None when it refuses the body as a whole."""
    try:
        doc = parse_json(body)
    except BodyError:
        return None
    return sort_pings(doc if isinstance(doc, list) else [doc], DEV, NOW)


def fast(body: bytes) -> list[dict[str, Any]] | None:
    got = wire.decode_common(body, DEV, NOW)
    if got is None:
        return None
    return [wire.as_dict(p) for p in ([got] if isinstance(got, wire.WirePing) else got)]


def test_a_common_batch_and_a_single_ping_take_the_fast_path_with_the_device_id() -> None:
    items = [good(1), good(2, state="stopped"), good(3, ts=int(NOW), lat=45, device_id=DEV, extra=[1, {"a": 2}])]
    got = fast(orjson.dumps(items))
    assert got is not None
    want = reference(orjson.dumps(items))
    assert want is not None and want[1:] == ([], None)
    assert got == want[0]  # ints as floats, the unknown field dropped, device_id on each
    assert [type(v) for v in got[2].values()] == [int, float, float, float, float, float, float, str]
    single = fast(orjson.dumps(good(9)))
    assert single == [pings.validate_ping(good(9), DEV, NOW)]


def test_anything_the_fast_path_does_not_take_whole_goes_to_the_reference_path() -> None:
    refused = [
        good(1, heading_deg=360.0),  # valid, but normalised to 0 by the reference path
        good(1, ts=NOW + 301),
        good(1, device_id="other"),  # 403 there
        good(1, device_id=None),  # a null device id is foreign too
        {**good(1), "seq": 1.0},
        good(1, lat=True),
        good(1, state="flying"),
        {k: v for k, v in good(1).items() if k != "lon"},
    ]
    for p in refused:
        assert fast(orjson.dumps([good(0), p])) is None, p
    assert fast(b'[{"seq": 1, "ts": NaN}]') is None
    # orjson refuses invalid UTF-8 anywhere, msgspec would skip it in an unknown field
    body = orjson.dumps([good(1, extra="x")]).replace(b'"x"', b'"\xff"')
    assert fast(body) is None and reference(body) is None
    assert fast(b"[]") == []  # the caller refuses an empty batch


def test_state_null_is_accepted_without_a_state_as_validate_ping_does() -> None:
    got = fast(orjson.dumps([good(1, state=None)]))
    assert got == [pings.validate_ping(good(1, state=None), DEV, NOW)] and "state" not in got[0]


def _within(lo: float, hi: float) -> st.SearchStrategy[Any]:
    """Numbers in (and at the edges of) a field's range, as floats or ints, and a few just outside."""
    return st.one_of(
        st.floats(lo, hi), st.sampled_from([lo, hi, -0.0 if lo == 0 else lo]), st.integers(int(lo), int(hi)),
        st.sampled_from([lo - 1, hi + 1, hi + 1e-9]),
    )


@st.composite
def mostly_valid(draw: st.DrawFn) -> Any:
    """Pings as phones send them, near every edge, so that the fast path accepts many batches."""
    p: dict[str, Any] = {
        "seq": draw(st.one_of(st.integers(0, 2**53 - 1), st.sampled_from([2**53 - 1, 2**53, -1]))),
        "ts": draw(_within(NOW - pings.MAX_AGE_S, NOW + pings.MAX_FUTURE_S)),
        "lat": draw(_within(-90, 90)),
        "lon": draw(_within(-180, 180)),
        "speed_mps": draw(_within(0, pings.MAX_SPEED_MPS)),
        "heading_deg": draw(_within(0, 360)),
        "accuracy_m": draw(_within(0, pings.MAX_ACCURACY_M)),
    }
    if draw(st.booleans()):
        p["state"] = draw(st.sampled_from(["driving", "stopped", "parked", None, "flying"]))
    if draw(st.integers(0, 4)) == 0:
        p["device_id"] = draw(st.sampled_from([DEV, "other", None]))
    if draw(st.integers(0, 4)) == 0:
        p[draw(st.text(min_size=1, max_size=4))] = draw(st.one_of(st.text(max_size=3), st.integers(), st.none()))
    return p


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(ping_like(), mostly_valid(), mostly_valid()), max_size=6), st.booleans(), st.booleans())
def test_whatever_the_fast_path_accepts_the_reference_path_accepts_the_same(
    items: list[Any], single: bool, ascii_only: bool
) -> None:
    doc = items[0] if single and items else items
    body = json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    got = fast(body)
    if got is None:
        return
    want = reference(body)
    assert want is not None
    accepted, refused, foreign = want
    assert refused == [] and foreign is None
    assert got == accepted
    for p, q in zip(got, accepted, strict=True):
        assert {k: type(v) for k, v in p.items()} == {k: type(v) for k, v in q.items()}


def test_records_encode_as_pings_encode_record_does_for_the_same_pings() -> None:
    dicts = [pings.validate_ping(good(i, state="driving" if i % 2 else None), DEV, NOW) for i in range(5)]
    structs = [wire.from_dict(p) for p in dicts]  # the reference path's pings on their way to the coalescer
    assert [wire.as_dict(p) for p in structs] == dicts
    ours = orjson.loads(wire.encode_record("871f1d489ffffff", structs, NOW))
    theirs = orjson.loads(pings.encode_record("871f1d489ffffff", dicts, NOW))
    assert ours == theirs
    decoded = pings.decode_record(wire.encode_record("871f1d489ffffff", structs, NOW))[2]
    assert decoded == [{**p, "cell": geo.cell(p["lat"], p["lon"], 9)} for p in dicts]
