"""pipeline.detect.baseline: cold start, learned high percentile, hour-of-week buckets, codec."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from pipeline.conditions import DEFAULT_FREE_FLOW_MPS
from pipeline.detect import baseline
from pipeline.detect.baseline import CellBaseline, Histogram

MONDAY_8H = datetime(2025, 11, 17, 8, 0, tzinfo=UTC).timestamp()  # a Monday, 08:00 UTC
HOUR = 3600.0


def feed_uniform(state: CellBaseline | None, sector: int, ts: float, lo: float, hi: float, n: int) -> CellBaseline:
    for i in range(n):
        state = baseline.update(state, sector, lo + (hi - lo) * i / (n - 1), ts)
    assert state is not None
    return state


def test_hour_of_week_is_monday_based_utc() -> None:
    assert baseline.hour_of_week(MONDAY_8H) == 8
    assert baseline.hour_of_week(MONDAY_8H - 8 * HOUR) == 0
    assert baseline.hour_of_week(MONDAY_8H - 9 * HOUR) == 167  # Sunday 23:00
    assert baseline.hour_of_week(0.0) == 72  # the epoch was a Thursday
    assert baseline.hour_of_week(MONDAY_8H + 7 * 24 * HOUR) == 8


def test_cold_start_is_the_default() -> None:
    assert baseline.free_flow(None, 2, MONDAY_8H) == DEFAULT_FREE_FLOW_MPS
    few = feed_uniform(None, 2, MONDAY_8H, 20.0, 25.0, baseline.MIN_SAMPLES - 1)
    assert baseline.free_flow(few, 2, MONDAY_8H) == DEFAULT_FREE_FLOW_MPS
    assert baseline.free_flow(few, 3, MONDAY_8H) == DEFAULT_FREE_FLOW_MPS  # another sector knows nothing


def test_learns_the_85th_percentile_within_a_bin() -> None:
    state = feed_uniform(None, 2, MONDAY_8H, 8.0, 16.0, 400)
    # 85th percentile of uniform 8..16 is 14.8; the answer is a 0.5 m/s bin centre
    assert abs(baseline.free_flow(state, 2, MONDAY_8H) - 14.8) <= 0.5


def test_hours_of_week_are_separate() -> None:
    state = feed_uniform(None, 0, MONDAY_8H, 4.0, 8.0, 200)  # rush hour
    state = feed_uniform(state, 0, MONDAY_8H + 14 * HOUR, 14.0, 20.0, 200)  # 22:00, empty roads
    rush = baseline.free_flow(state, 0, MONDAY_8H + 10 * 60)
    night = baseline.free_flow(state, 0, MONDAY_8H + 14 * HOUR + 10 * 60)
    assert rush < 8.0 and night > 18.0
    # an hour never seen falls back to the hour-agnostic estimate of the sector
    other = baseline.free_flow(state, 0, MONDAY_8H + 3 * HOUR)
    assert rush < other < night


def test_clamped_to_a_sane_range() -> None:
    fast = feed_uniform(None, 1, MONDAY_8H, 60.0, 80.0, 100)
    slow = feed_uniform(None, 1, MONDAY_8H, 1.0, 2.0, 100)
    assert baseline.free_flow(fast, 1, MONDAY_8H) == baseline.MAX_FREE_FLOW_MPS
    assert baseline.free_flow(slow, 1, MONDAY_8H) == baseline.MIN_FREE_FLOW_MPS


def test_standing_still_is_not_counted() -> None:
    state = feed_uniform(None, 1, MONDAY_8H, 0.0, 0.9, 100)
    assert state.is_empty()
    assert baseline.free_flow(state, 1, MONDAY_8H) == DEFAULT_FREE_FLOW_MPS


def test_state_stays_bounded_and_follows_change() -> None:
    state = feed_uniform(None, 4, MONDAY_8H, 8.0, 10.0, 5000)
    state = feed_uniform(state, 4, MONDAY_8H, 20.0, 22.0, 5000)
    hist = state.hours[(4, 8)]
    assert hist.n < baseline.HALVE_AT
    assert len(hist.counts) <= int(baseline.MAX_SPEED_MPS * baseline.BIN_PER_MPS) + 1
    assert baseline.free_flow(state, 4, MONDAY_8H) > 19.0  # the recent speeds dominate


def test_free_flow_by_sector_covers_the_seen_sectors() -> None:
    state = feed_uniform(None, 2, MONDAY_8H, 8.0, 16.0, 100)
    state = baseline.update(state, 5, 10.0, MONDAY_8H)
    ff = baseline.free_flow_by_sector(state, MONDAY_8H)
    assert set(ff) == {2, 5}
    assert ff[5] == DEFAULT_FREE_FLOW_MPS
    assert baseline.free_flow_by_sector(None, MONDAY_8H) == {}


def test_bytes_round_trip() -> None:
    state = feed_uniform(None, 2, MONDAY_8H, 8.0, 16.0, 120)
    state = feed_uniform(state, 6, MONDAY_8H + 30 * HOUR, 3.0, 30.0, 80)
    back = CellBaseline.from_bytes(state.to_bytes())
    assert back == state
    for sec, ts in [(2, MONDAY_8H), (6, MONDAY_8H + 30 * HOUR), (6, MONDAY_8H)]:
        assert baseline.free_flow(back, sec, ts) == baseline.free_flow(state, sec, ts)


@given(
    st.lists(st.floats(min_value=0.0, max_value=60.0, allow_nan=False), min_size=1, max_size=200),
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_quantile_is_monotone_in_q(speeds: list[float], q1: float, q2: float) -> None:
    hist = Histogram()
    for s in speeds:
        hist.add(s)
    lo, hi = sorted((q1, q2))
    assert hist.quantile(lo) <= hist.quantile(hi)
    assert min(min(speeds), baseline.MAX_SPEED_MPS) - 0.5 <= hist.quantile(lo) <= baseline.MAX_SPEED_MPS + 0.5


@given(st.lists(st.floats(min_value=0.0, max_value=90.0, allow_nan=False), max_size=120), st.integers(0, 7))
def test_free_flow_always_in_range(speeds: list[float], sector: int) -> None:
    state: CellBaseline | None = None
    for s in speeds:
        state = baseline.update(state, sector, s, MONDAY_8H)
    ff = baseline.free_flow(state, sector, MONDAY_8H)
    assert baseline.MIN_FREE_FLOW_MPS <= ff <= baseline.MAX_FREE_FLOW_MPS
