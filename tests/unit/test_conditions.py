"""pipeline.conditions: congestion levels, k-anonymity, materiality, versions."""

from __future__ import annotations

import copy

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import conditions, geo
from pipeline.conditions import DEFAULT_FREE_FLOW_MPS, build_condition, is_material, next_version
from pipeline.speed import WINDOW_S, CellSpeedWindow, SectorStats

CELL = geo.cell(48.8566, 2.3522, 9)
NOW = 1_700_000_000.0


def _stats(sector: int, median: float, devices: int = 3, samples: int = 12) -> SectorStats:
    return SectorStats(
        sector=sector, mean_mps=median, median_mps=median, p85_mps=median + 1.0, samples=samples, devices=devices
    )


@pytest.mark.parametrize(
    "ratio,level",
    [(1.5, 0), (1.0, 0), (0.9, 0), (0.89, 1), (0.7, 1), (0.69, 2), (0.5, 2), (0.49, 3), (0.3, 3), (0.29, 4), (0.0, 4)],
)
def test_level_bands(ratio: float, level: int) -> None:
    assert conditions.level_for(ratio) == level


@pytest.mark.parametrize(
    "ratio,jam", [(2.0, 0.0), (1.0, 0.0), (0.9, 1.0), (0.55, 4.5), (0.31, 6.9), (0.0, 10.0), (-0.5, 10.0)]
)
def test_jam_factor_clipped_and_rounded(ratio: float, jam: float) -> None:
    assert conditions.jam_factor_for(ratio) == jam
    assert 0.0 <= conditions.jam_factor_for(ratio) <= 10.0


def test_build_condition_levels_from_free_flow() -> None:
    stats = {0: _stats(0, 18.0), 4: _stats(4, 4.0, devices=5, samples=40)}
    cond = build_condition(CELL, stats, now=NOW, version=7, min_devices=3, free_flow={0: 20.0, 4: 20.0})
    assert cond is not None
    assert cond["cell"] == CELL and cond["version"] == 7 and cond["updated_at"] == NOW
    assert (cond["lat"], cond["lon"]) == geo.cell_center(CELL)
    by_sec = {s["sector"]: s for s in cond["sectors"]}
    assert by_sec[0]["level"] == 0 and by_sec[0]["jam_factor"] == 1.0  # ratio 0.9
    assert by_sec[4]["level"] == 4 and by_sec[4]["jam_factor"] == 8.0  # ratio 0.2
    assert by_sec[4]["heading_deg"] == 180.0
    assert cond["level"] == 4 and cond["jam_factor"] == 8.0  # the worst sector
    assert cond["sample_bucket"] == "30-99"  # 52 samples
    assert cond["window_s"] == WINDOW_S


def test_build_condition_default_free_flow() -> None:
    cond = build_condition(CELL, {0: _stats(0, DEFAULT_FREE_FLOW_MPS * 0.6)}, now=NOW, version=1, min_devices=3)
    assert cond is not None
    assert cond["sectors"][0]["free_flow_mps"] == round(DEFAULT_FREE_FLOW_MPS, 2)
    assert cond["level"] == 2


def test_build_condition_hides_sectors_below_k() -> None:
    stats = {0: _stats(0, 10.0, devices=3), 2: _stats(2, 1.0, devices=2, samples=50)}
    cond = build_condition(CELL, stats, now=NOW, version=1, min_devices=3)
    assert cond is not None
    assert [s["sector"] for s in cond["sectors"]] == [0]
    assert cond["sample_bucket"] == "10-29"  # the hidden sector's samples are not counted
    assert build_condition(CELL, {2: _stats(2, 1.0, devices=2)}, now=NOW, version=1, min_devices=3) is None
    assert build_condition(CELL, {}, now=NOW, version=1, min_devices=3) is None


def test_build_condition_never_carries_device_ids() -> None:
    w = CellSpeedWindow()
    devices = ["dev-alpha-123", "dev-bravo-456", "dev-charlie-789"]
    for i, d in enumerate(devices):
        w.add(d, i, NOW - 10, 5.0 + i, 90.0, NOW)
    cond = build_condition(CELL, w.stats(NOW), now=NOW, version=1, min_devices=3)
    assert cond is not None and cond["sectors"][0]["devices"] == 3
    raw = orjson.dumps(cond)
    for d in devices:
        assert d.encode() not in raw


def test_closed_gives_level_5() -> None:
    cond = build_condition(
        CELL, {0: _stats(0, 13.0)}, now=NOW, version=1, min_devices=3, incidents=["inc-1"], closed=True
    )
    assert cond is not None
    assert cond["level"] == 5 and cond["jam_factor"] == 10.0
    assert cond["sectors"][0]["level"] == 5
    assert cond["incidents"] == ["inc-1"]
    # a closure with no traffic data still publishes level 5
    bare = build_condition(CELL, {}, now=NOW, version=1, min_devices=3, incidents=["inc-1"], closed=True)
    assert bare is not None and bare["level"] == 5 and bare["sectors"] == []
    # speeds alone never say closed
    slow = build_condition(CELL, {0: _stats(0, 0.0)}, now=NOW, version=1, min_devices=3)
    assert slow is not None and slow["level"] == 4


# -- materiality ----------------------------------------------------------------
def _cond(median: float, *, now: float = NOW, ff: float = 20.0) -> dict[str, object]:
    c = build_condition(CELL, {0: _stats(0, median)}, now=now, version=1, min_devices=3, free_flow={0: ff})
    assert c is not None
    return c


def test_first_publish_is_material() -> None:
    assert is_material(None, _cond(10.0), NOW)


def test_level_change_is_material() -> None:
    prev = _cond(19.0)  # level 0
    assert is_material(prev, _cond(17.0, now=NOW + 1), NOW + 1)  # 0.85 → level 1, ~10 % change


def test_speed_change_over_15_percent_is_material() -> None:
    prev = _cond(10.0, ff=100.0)  # level 4 either way
    assert is_material(prev, _cond(11.6, ff=100.0, now=NOW + 1), NOW + 1)
    assert is_material(prev, _cond(8.4, ff=100.0, now=NOW + 1), NOW + 1)


def test_speed_change_up_to_15_percent_is_not_material() -> None:
    prev = _cond(10.0, ff=100.0)
    assert not is_material(prev, _cond(11.4, ff=100.0, now=NOW + 1), NOW + 1)
    assert not is_material(prev, _cond(8.6, ff=100.0, now=NOW + 1), NOW + 1)
    assert not is_material(prev, copy.deepcopy(prev), NOW + 59.9)


def test_heartbeat_after_60_s() -> None:
    prev = _cond(10.0)
    same = _cond(10.0, now=NOW + 60)
    assert not is_material(prev, same, NOW + 59)
    assert is_material(prev, same, NOW + 60)


def test_incident_and_sector_set_changes_are_material() -> None:
    prev = _cond(10.0)
    new = copy.deepcopy(prev)
    new["incidents"] = ["inc-9"]
    assert is_material(prev, new, NOW + 1)
    two = build_condition(
        CELL, {0: _stats(0, 10.0), 4: _stats(4, 10.0)}, now=NOW, version=1, min_devices=3, free_flow={0: 20.0, 4: 20.0}
    )
    assert two is not None
    assert is_material(prev, two, NOW + 1)  # a new sector
    assert is_material(two, prev, NOW + 1)  # a sector gone


# -- versions -------------------------------------------------------------------
def test_next_version_is_epoch_ms_and_strictly_increasing() -> None:
    assert next_version(0, NOW) == int(NOW * 1000)
    v = 0
    clock = [NOW, NOW, NOW + 0.0001, NOW - 3600, NOW - 7200, NOW + 5, NOW + 5, 0.0]
    for t in clock:
        nv = next_version(v, t)
        assert nv > v
        v = nv
    assert v == int((NOW + 5) * 1000) + 2


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_unchanged_agrees_with_is_material_on_the_built_condition(data: st.DataObject) -> None:
    # the engine skips building a message when `unchanged` says so: it must never hide a material change
    def stats() -> dict[int, SectorStats]:
        out = {}
        for sec in data.draw(st.sets(st.integers(0, 7), max_size=3)):
            med = data.draw(st.floats(0.0, 40.0))
            out[sec] = SectorStats(sec, med, med, med + 1, data.draw(st.integers(3, 50)), data.draw(st.integers(1, 6)))
        return out

    cell = geo.cell(52.52, 13.405, 9)
    kw = {"min_devices": 3, "free_flow": {0: 14.0, 4: 20.0}}
    inc_before = data.draw(st.lists(st.sampled_from(["a", "b"]), unique=True, max_size=2))
    prev = build_condition(cell, stats(), now=1000.0, version=1, incidents=sorted(inc_before), **kw)
    if prev is None:
        return
    now = 1000.0 + data.draw(st.floats(0.0, 90.0))
    closed = data.draw(st.booleans())
    new_stats = stats()
    incidents = sorted(data.draw(st.lists(st.sampled_from(["a", "b"]), unique=True, max_size=2)))
    rs = conditions.readings(new_stats, min_devices=3, free_flow=kw["free_flow"], closed=closed)
    new = build_condition(cell, new_stats, now=now, version=2, incidents=incidents, closed=closed, **kw)
    if conditions.unchanged(prev, rs, incidents, now):
        assert new is not None and not is_material(prev, new, now)
