"""Pure parts of the operator tools: generation names, table key → partition, control state, skew."""

from __future__ import annotations

import re
from pathlib import Path

import h3
import orjson
import pytest

from pipeline import geo
from pipeline.ingest.coalesce import partition_of
from pipeline.ops import control, migrate, topics
from pipeline.ops.kafkaview import TopicInfo, lag
from pipeline.settings import Settings, generation_app_id, generation_topic

BERLIN = (52.5200, 13.4050)


def test_generation_1_keeps_todays_names_and_later_ones_are_suffixed() -> None:
    s = Settings()
    assert (s.generation, s.pings_topic, s.reports_topic, s.worker_app_id) == (
        1,
        "traverz.pings.v1",
        "traverz.reports.v1",
        "traverz",
    )
    s2 = Settings(generation=2, app_id="city")
    assert (s2.pings_topic, s2.reports_topic, s2.worker_app_id) == (
        "traverz.pings.v1.g2",
        "traverz.reports.v1.g2",
        "city-g2",
    )
    assert generation_topic("x", 7) == "x.g7" and generation_app_id("a", 1) == "a"


def test_every_table_key_layout_maps_to_the_res7_key_of_its_partition() -> None:
    c9 = geo.cell(*BERLIN, 9)
    k7 = geo.key_cell(*BERLIN, 7, 9)
    assert migrate.partition_key(c9) == k7  # speed, baseline, active incidents, crash areas
    assert migrate.partition_key(k7) == k7  # report books
    assert migrate.partition_key(f"{k7}|dev-1") == k7  # devices
    assert migrate.partition_key(f"{k7}|dev|with|bars") == k7
    assert migrate.new_partition(c9.encode(), 8) == partition_of(k7, 8)
    with pytest.raises(ValueError):
        migrate.partition_key("not-a-cell")
    with pytest.raises(ValueError):
        migrate.partition_key(str(h3.cell_to_parent(c9, 5)))  # coarser than a key: no table has one


def test_crash_area_keys_live_in_the_partition_of_their_parent() -> None:
    # crash areas are only written under a key7 that is their parent (crash.area_keys filters so)
    from pipeline.detect import crash

    k7 = geo.key_cell(*BERLIN, 7, 9)
    for key in crash.area_keys(*BERLIN, k7):
        assert migrate.partition_key(key) == k7


def test_migrated_tables_are_the_workers_tables() -> None:
    source = (Path(__file__).parents[2] / "topologies" / "app.py").read_text()
    assert tuple(re.findall(r'_table\("([a-z-]+)"\)', source)) == migrate.TABLES


def test_latest_value_per_key_drops_tombstoned_keys() -> None:
    recs: list[tuple[bytes, bytes | None]] = [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"b", None), (b"c", b"3")]
    assert migrate.latest(recs) == {b"a": b"2", b"c": b"3"}


def test_control_state_folds_generations_and_heartbeats() -> None:
    st = control.ControlState("app")
    s = Settings(app_id="app")
    st.apply(control.generation_key("other"), control.generation_record(Settings(app_id="other"), 9, 8, 0.0))
    assert st.current(1) == 1  # another deployment's record is not ours
    st.apply(control.generation_key("app"), control.generation_record(s, 3, 8, 0.0))
    assert st.current(1) == 3 and st.current(5) == 5
    assert orjson.loads(control.generation_record(s, 3, 8, 0.0))["pings_topic"] == "traverz.pings.v1.g3"
    st.apply(control.ingest_key("app", "a"), control.heartbeat(2, now=100.0))
    st.apply(control.ingest_key("app", "b"), control.heartbeat(3, now=100.0))
    st.apply(control.ingest_key("app", "gone"), control.heartbeat(2, now=100.0 - control.LIVE_S - 1))
    assert st.live_ingest(100.0) == {"a": 2, "b": 3}  # a silent process is not waited for
    st.apply(control.ingest_key("app", "a"), None)  # stopped cleanly
    assert st.live_ingest(100.0) == {"b": 3}


def test_skew_is_max_over_mean_of_growth_else_of_end_offsets() -> None:
    info = TopicInfo("t", 4, 1, "delete")
    v = topics.view(info, {0: 0, 1: 0, 2: 0, 3: 0}, {0: 100, 1: 10, 2: 10, 3: 0}, {0: 90, 1: 10}, 2.0)
    assert v.skew_by == "growth" and v.skew == pytest.approx(100 / 30, abs=1e-3)
    assert [p.lag for p in v.detail] == [10, 0, 10, 0]  # a partition never committed lags by its length
    assert v.lag_total == 20 and v.detail[0].growth_per_s == 50.0
    still = topics.view(info, {0: 5, 1: 5, 2: 5, 3: 5}, {0: 5, 1: 5, 2: 5, 3: 5}, None, 1.0)
    assert still.skew_by == "end_offsets" and still.skew == 1.0 and still.lag_total is None
    text = topics.render(topics.Description(1, "g", "Stable", 1, 2.0, [v]))
    assert "skew 3.33× (growth)" in text and "█" * topics.BAR in text
    assert lag({0: 5, 1: 3}, {0: 5}) == {0: 0, 1: 3}
