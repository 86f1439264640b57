"""``pipeline._records.check_pings`` (C) against the Python loop it replaced, field by field."""

from __future__ import annotations

import math
from typing import Any

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import pings
from pipeline._records import check_pings
from pipeline.bench.stream import check_python
from pipeline.pings import RecordError


def reference(batch: list[Any], res: int) -> str | list[str]:
    """The Python loop the C pass replaced (the raw baseline's): the first bad ping's reason, or every ping's cell."""
    try:
        check_python(batch)
    except RecordError as exc:
        return str(exc)
    return [h3.latlng_to_cell(p["lat"], p["lon"], res) for p in batch]


def c_side(batch: list[Any], res: int) -> str | list[str]:
    try:
        check_pings(batch, res, RecordError)
    except RecordError as exc:
        return str(exc)
    return [p["cell"] for p in batch]


_odd = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(), max_size=1),
)


@st.composite
def ping_like(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(_odd)
    p: dict[str, Any] = {
        "device_id": "dev-1",
        "seq": draw(st.integers(0, 2**53)),
        "ts": 1.7e9,
        "lat": draw(st.floats(-91, 91, allow_nan=False)),
        "lon": draw(st.floats(-181, 181, allow_nan=False)),
        "speed_mps": draw(st.floats(-1, 91, allow_nan=False)),
        "heading_deg": draw(st.floats(-1, 361, allow_nan=False)),
    }
    for name in draw(st.lists(st.sampled_from([*p, "state"]), max_size=2)):
        if draw(st.booleans()):
            p.pop(name, None)
        else:
            p[name] = draw(_odd)
    return p


@settings(max_examples=600, deadline=None)
@given(st.lists(ping_like(), min_size=1, max_size=4), st.sampled_from([7, 9, 12]))
def test_the_c_check_refuses_and_locates_exactly_as_the_python_loop(batch: list[Any], res: int) -> None:
    assert c_side(batch, res) == reference(batch, res)


def test_edges_of_every_range_and_the_cell_of_each_ping() -> None:
    good = {"device_id": "d", "seq": 1, "ts": 1, "lat": 90, "lon": -180.0, "speed_mps": 90, "heading_deg": 360.0}
    batch = [dict(good), {**good, "lat": -90.0, "lon": 180, "speed_mps": 0, "heading_deg": 0}]
    check_pings(batch, 9, RecordError)
    assert [p["cell"] for p in batch] == [h3.latlng_to_cell(90, -180.0, 9), h3.latlng_to_cell(-90.0, 180, 9)]
    bad_values = {
        "lat": (90.000001, math.nan, 10**400, -math.inf), "lon": (180.5, math.nan), "speed_mps": (-0.1, 90.01),
        "heading_deg": (360.01, -1e-9, math.nan),
    }
    for name, values in bad_values.items():
        for v in values:
            with pytest.raises(RecordError, match="out of range"):
                check_pings([dict(good), {**good, name: v}], 9, RecordError)
    for name, v in (("seq", True), ("seq", 1.0), ("lat", False), ("device_id", 7), ("ts", "1")):
        with pytest.raises(RecordError, match="mistyped"):
            check_pings([{**good, name: v}], 9, RecordError)


def test_cells_are_shared_strings_so_the_engine_compares_them_by_identity() -> None:
    a = pings.with_cells([{"device_id": "a", "seq": 1, "ts": 1.0, "lat": 52.5, "lon": 13.4, "speed_mps": 3.0,
                           "heading_deg": 90.0}])
    b = pings.with_cells([dict(a[0], device_id="b")])
    assert a[0]["cell"] is b[0]["cell"] == h3.latlng_to_cell(52.5, 13.4, 9)


def test_device_ids_are_shared_strings_too() -> None:
    raw = b'{"v":1,"cell":"871f1d489ffffff","ingest_ts":1.0,"pings":[%s]}'
    ping = b'{"device_id":"car-%d","seq":1,"ts":1.0,"lat":52.5,"lon":13.4,"speed_mps":3.0,"heading_deg":90.0}'
    first = pings.decode_record(raw % b",".join(ping % i for i in (1, 2)))[2]
    again = pings.decode_record(raw % (ping % 1))[2]
    assert again[0]["device_id"] is first[0]["device_id"] == "car-1"  # two parses, one object
    assert first[1]["device_id"] == "car-2"
