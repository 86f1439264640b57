"""The in-place fast path for common pings agrees with ``pings.validate_ping`` on every input."""

from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import pings
from pipeline.ingest.accept import sort_pings

NOW = 1_700_000_000.0
DEV = "dev-1"


def good(seq: int = 1, **over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"seq": seq, "ts": NOW - 5.0, "lat": 45.76, "lon": 4.83, "speed_mps": 12.5,
                         "heading_deg": 90.0, "accuracy_m": 5.0}
    p.update(over)
    return p


def reference(items: list[Any]) -> tuple[list[dict[str, Any]], list[tuple[int, str]], int | None]:
    """What the proxy did before the fast path: validate_ping on every item, 403 first."""
    accepted, refused = [], []
    for i, item in enumerate(items):
        if type(item) is dict and "device_id" in item and item["device_id"] != DEV:
            return [], [], i
        result = pings.validate_ping(item, DEV, NOW)
        if isinstance(result, str):
            refused.append((i, result))
        else:
            accepted.append(result)
    return accepted, refused, None


def test_a_common_ping_is_accepted_as_its_own_dict_with_the_device_id() -> None:
    items = [good(1), good(2, state="stopped")]
    accepted, refused, foreign = sort_pings(items, DEV, NOW)
    assert accepted[0] is items[0] and accepted[1] is items[1]  # no copy
    assert accepted == [pings.validate_ping(good(1), DEV, NOW), pings.validate_ping(good(2, state="stopped"), DEV, NOW)]
    assert refused == [] and foreign is None


def test_anything_unusual_takes_the_reference_path() -> None:
    items = [
        good(1, ts=int(NOW)),  # an int: normalised to float by validate_ping
        good(2, heading_deg=360.0),  # stored as 0.0
        good(3, extra="x"),  # unknown field dropped
        good(4, state="flying"),
        good(5, lat=91.0),
        good(6, speed_mps=math.nan),
        {k: v for k, v in good(7).items() if k != "lon"},
        good(8, device_id=DEV),
        "nope",
    ]
    got = sort_pings(copy.deepcopy(items), DEV, NOW)
    want = reference(copy.deepcopy(items))
    assert got == want
    assert [type(v) for v in got[0][0].values()] == [str, int, float, float, float, float, float, float]
    assert got[0][1]["heading_deg"] == 0.0 and "extra" not in got[0][2]


def test_a_foreign_device_id_refuses_the_request_at_its_index() -> None:
    assert sort_pings([good(1), good(2, device_id="other"), "x"], DEV, NOW) == ([], [], 1)
    assert sort_pings([good(1, device_id="other", state="stopped")], DEV, NOW) == ([], [], 0)


_value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**60), 2**60), st.booleans(), st.none(),
    st.text(max_size=3), st.sampled_from(["driving", "stopped", "parked", DEV, "other"]),
)
_near = {  # values near each field's valid range, so that many pings pass
    "seq": st.integers(-2, 2**53 + 2),
    "ts": st.floats(NOW - 90_000, NOW + 400),
    "lat": st.floats(-91, 91),
    "lon": st.floats(-181, 181),
    "speed_mps": st.floats(-1, 91),
    "heading_deg": st.floats(-1, 361),
    "accuracy_m": st.floats(-1, 100_001),
    "state": st.sampled_from(["driving", "stopped", "parked", "flying"]),
    "device_id": st.sampled_from([DEV, "other"]),
}


@st.composite
def ping_like(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(_value)
    p = {}
    for name, near in _near.items():
        optional = name in ("state", "device_id")
        roll = draw(st.integers(0, 9))
        if (optional and roll < 7) or (not optional and roll == 0):
            continue
        p[name] = draw(_value) if roll == 9 else draw(near)
    if draw(st.integers(0, 9)) == 0:
        p[draw(st.text(min_size=1, max_size=4))] = draw(_value)
    return p


@settings(max_examples=600, deadline=None)
@given(st.lists(ping_like(), max_size=6))
def test_the_fast_path_matches_validate_ping_on_generated_batches(items: list[Any]) -> None:
    got = sort_pings(copy.deepcopy(items), DEV, NOW)
    want = reference(copy.deepcopy(items))
    assert got == want
    for p in got[0]:  # the same values and the same types, key order aside
        assert {k: type(v) for k, v in p.items()} == {k: type(v) for k, v in want[0][got[0].index(p)].items()}

