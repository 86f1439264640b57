"""pipeline.detect.incidents: merging, confidence, votes, lifetimes, spam, recovery, alert payload, throttling."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import geo
from pipeline.detect import incidents
from pipeline.detect.events import IncidentEvent, to_alert
from pipeline.detect.incidents import Book
from pipeline.engine import Engine, Tables

ORIGIN = (48.8566, 2.3522)
T0 = 1_763_780_000.0
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "alert.schema.json").read_text())
_ids = itertools.count()


def rep(
    type_: str = "hazard",
    *,
    device: str = "dev-a",
    ts: float = T0,
    east_m: float = 0.0,
    heading: float = 90.0,
) -> dict[str, Any]:
    lat, lon = geo.destination(*ORIGIN, 90.0, east_m)
    return {
        "v": 1,
        "kind": "report",
        "id": f"r-872a1070bffffff-{next(_ids):08x}",
        "device_id": device,
        "type": type_,
        "lat": lat,
        "lon": lon,
        "heading_deg": heading,
        "ts": ts,
        "ingest_ts": ts + 0.2,
    }


def vote(target: str, device: str, value: str, ts: float) -> dict[str, Any]:
    return {"v": 1, "kind": "vote", "report_id": target, "device_id": device, "vote": value, "ts": ts, "ingest_ts": ts}


def feed(book: Book | None, *reports: dict[str, Any]) -> tuple[Book, list[IncidentEvent]]:
    out: list[IncidentEvent] = []
    for r in reports:
        book, new = incidents.report(book, r, r["ts"] + 1.0)
        out += new
    assert book is not None
    return book, out


def test_reports_within_150_m_same_direction_merge() -> None:
    book, emits = feed(None, rep(device="a"), rep(device="b", east_m=120.0, heading=120.0, ts=T0 + 30))
    assert len(book.incidents) == 1
    assert [e.state for e in emits] == ["opened", "updated"]
    assert emits[0].incident.id == emits[1].incident.id and emits[0].incident.id.startswith("i-")
    assert emits[1].incident.evidence.reports == 2
    assert emits[1].incident.confidence > emits[0].incident.confidence
    assert geo.distance_m(emits[1].incident.lat, emits[1].incident.lon, *geo.destination(*ORIGIN, 90.0, 60.0)) < 1


def test_opposite_direction_is_another_incident() -> None:
    book, _ = feed(None, rep(device="a"), rep(device="b", heading=270.0))
    assert len(book.incidents) == 2


def test_300_m_apart_is_another_incident() -> None:
    book, _ = feed(None, rep(device="a"), rep(device="b", east_m=300.0))
    assert len(book.incidents) == 2


def test_other_type_is_another_incident() -> None:
    book, _ = feed(None, rep("crash", device="a"), rep("hazard", device="b"))
    assert len(book.incidents) == 2


def test_replayed_report_counts_once() -> None:
    r = rep()
    book, emits = feed(None, r, r, r)
    assert [e.state for e in emits] == ["opened"]
    assert next(iter(book.incidents.values())).reports == 1


@pytest.mark.parametrize(
    "type_,lifetime", [("crash", 3600), ("hazard", 3600), ("stalled_vehicle", 1800), ("road_work", 86400)]
)
def test_lifetime_per_type(type_: str, lifetime: float) -> None:
    book, emits = feed(None, rep(type_))
    if type_ == "crash":  # a crash needs a second device (or a probe detection)
        book, emits = feed(book, rep(type_, device="b"))
    assert [e.state for e in emits] == ["opened"]  # one report opens the others
    assert emits[0].incident.expires_at == T0 + lifetime
    assert incidents.expire(book, T0 + lifetime - 1) == []
    gone = incidents.expire(book, T0 + lifetime)
    assert [(e.state, e.reason) for e in gone] == [("cleared", "expired")]
    assert incidents.expire(book, T0 + lifetime + 1) == []  # told once


def test_one_device_does_not_make_a_crash_a_second_one_does() -> None:
    """A lone crash report may be a prank (the city scenario's spam device); two devices agree."""
    book, emits = feed(None, rep("crash", device="a"), rep("crash", device="a", ts=T0 + 60))
    assert emits == []
    book, emits = feed(book, rep("crash", device="b", ts=T0 + 90, east_m=30.0))
    assert [e.state for e in emits] == ["opened"] and emits[0].incident.evidence.reports == 3


def test_closure_needs_two_devices_and_lasts_until_cleared() -> None:
    book, emits = feed(None, rep("closure", device="a"))
    assert emits == []  # one report does not turn a road black
    book, emits = feed(book, rep("closure", device="b", ts=T0 + 60, east_m=20.0))
    assert [e.state for e in emits] == ["opened"]
    assert emits[0].incident.expires_at is None and to_alert(emits[0])["expires_at"] is None
    assert incidents.expire(book, T0 + 30 * 86400) == []
    inc_id = emits[0].incident.id
    cleared = incidents.clear(book, inc_id, T0 + 30 * 86400)
    assert [(e.state, e.reason) for e in cleared] == [("cleared", "cleared")]
    assert incidents.clear(book, inc_id, T0 + 30 * 86400 + 1) == []


def test_closure_opens_with_one_report_and_a_probe() -> None:
    book, _ = feed(None, rep("closure"))
    inc = next(iter(book.incidents.values()))
    opened = incidents.set_probes(book, inc.id, 1, T0 + 5)
    assert [e.state for e in opened] == ["opened"] and opened[0].incident.evidence.probes == 1


def test_pending_closure_is_forgotten_silently() -> None:
    book, _ = feed(None, rep("closure"))
    assert incidents.expire(book, T0 + incidents.PENDING_TTL_S + 1) == []


def test_not_there_majority_clears() -> None:
    r = rep()
    book, _ = feed(None, r)
    ts = T0 + 120
    book, e1 = incidents.vote(book, vote(r["id"], "v1", "not_there", ts), ts)
    assert [e.state for e in e1] == ["updated"]  # one denial against one reporter: not yet
    book, e2 = incidents.vote(book, vote(r["id"], "v2", "not_there", ts + 5), ts + 5)
    assert [(e.state, e.reason) for e in e2] == [("cleared", "voted_down")]
    assert e2[0].incident.evidence.votes_down == 2
    book, e3 = incidents.vote(book, vote(r["id"], "v3", "not_there", ts + 9), ts + 9)
    assert e3 == []


def test_still_there_outweighs_not_there() -> None:
    r = rep()
    book, emits = feed(None, r)
    inc_id = emits[0].incident.id
    for i, (dev, value) in enumerate([("u1", "still_there"), ("u2", "still_there"), ("d1", "not_there")]):
        book, _ = incidents.vote(book, vote(inc_id, dev, value, T0 + 60 + i), T0 + 60 + i)
    book, out = incidents.vote(book, vote(inc_id, "d2", "not_there", T0 + 70), T0 + 70)
    assert [e.state for e in out] == ["updated"]  # 2 down vs 2 up + 1 reporter


def test_still_there_extends_expiry_and_votes_count_once_per_device() -> None:
    r = rep("hazard")
    book, _ = feed(None, r)
    ts = T0 + 1800
    book, out = incidents.vote(book, vote(r["id"], "u1", "still_there", ts), ts)
    assert [e.state for e in out] == ["updated"]
    assert out[0].incident.expires_at == ts + 3600 and out[0].incident.evidence.votes_up == 1
    book, again = incidents.vote(book, vote(r["id"], "u1", "still_there", ts + 10), ts + 10)
    assert again == []
    assert incidents.expire(book, T0 + 3600 + 1) == []
    assert [e.reason for e in incidents.expire(book, ts + 3600)] == ["expired"]


def test_vote_on_unknown_id_is_ignored() -> None:
    book, out = incidents.vote(None, vote("r-nope", "u1", "still_there", T0), T0)
    assert out == [] and book.is_empty()


def test_spammer_is_rate_limited_and_down_weighted() -> None:
    reports = [rep("hazard", device="spam", ts=T0 + 60 * i, east_m=400.0 * i) for i in range(7)]
    book, emits = feed(None, *reports)
    # reports 1-3 weigh 1 and open alone; 4th weighs 1/2, 5th 1/3: neither opens alone; 6th and 7th ignored
    assert [e.state for e in emits] == ["opened"] * 3
    weights = sorted(w for inc in book.incidents.values() for w in inc.reporters.values())
    assert weights == pytest.approx([1 / 3, 1 / 2, 1, 1, 1])
    assert len(book.incidents) == 5
    # after 10 quiet minutes the device may report again, at full weight
    later = rep("hazard", device="spam", ts=T0 + 2000, east_m=5000.0)
    book, emits = feed(book, later)
    assert [e.state for e in emits] == ["opened"]


def test_down_weighted_report_still_corroborates() -> None:
    reports = [rep("hazard", device="spam", ts=T0 + i, east_m=400.0 * (i + 1)) for i in range(3)]
    book, _ = feed(None, *reports)
    book, emits = feed(book, rep("hazard", device="spam", ts=T0 + 10))
    assert emits == []
    book, emits = feed(book, rep("hazard", device="honest", ts=T0 + 20, east_m=10.0))
    assert [e.state for e in emits] == ["opened"]
    assert emits[0].incident.confidence == pytest.approx(1 - 0.5**1.5, abs=0.01)


def test_old_reports_are_ignored_and_late_ones_weigh_less() -> None:
    book, emits = incidents.report(None, rep("hazard", ts=T0), T0 + 3600)
    assert emits == [] and not book.incidents
    _, fresh = incidents.report(None, rep("hazard", ts=T0), T0 + 1)
    _, late = incidents.report(None, rep("hazard", ts=T0), T0 + 600)
    assert late[0].incident.confidence < fresh[0].incident.confidence


@pytest.mark.parametrize("type_", ["crash", "stalled_vehicle", "hazard"])
def test_recovered_flow_clears_crash_stall_hazard(type_: str) -> None:
    book, _ = feed(None, rep(type_), rep(type_, device="c"))
    inc = next(iter(book.incidents.values()))
    assert incidents.on_speed(inc, 0.95, T0 + 60) is None  # recovered, but too young
    assert incidents.on_speed(inc, 0.95, T0 + 360) is None  # 5 min recovered, only 6 min old
    assert incidents.on_speed(inc, 0.5, T0 + 400) is None  # slow again: the count restarts
    assert incidents.on_speed(inc, 0.9, T0 + 500) is None
    assert incidents.on_speed(inc, 0.9, T0 + 799) is None
    cleared = incidents.on_speed(inc, 0.9, T0 + 800)
    assert cleared is not None and (cleared.state, cleared.reason) == ("cleared", "flow_restored")
    assert incidents.on_speed(inc, 0.9, T0 + 900) is None
    book, again = feed(book, rep(type_, device="b", ts=T0 + 950), rep(type_, device="d", ts=T0 + 951))
    assert [e.state for e in again][:1] == ["opened"] and again[0].incident.id != inc.id  # a new one


def test_recovered_flow_does_not_clear_road_work() -> None:
    book, _ = feed(None, rep("road_work"))
    inc = next(iter(book.incidents.values()))
    for t in range(0, 7200, 60):
        assert incidents.on_speed(inc, 1.0, T0 + t) is None


def test_unknown_flow_is_not_recovery() -> None:
    book, _ = feed(None, rep("crash"))
    inc = next(iter(book.incidents.values()))
    assert incidents.on_speed(inc, None, T0 + 3000) is None and inc.recovered_since is None
    assert (inc.cell, inc.sector) == (geo.cell(inc.lat, inc.lon, 9), geo.sector(90.0))


def test_to_alert_shape_and_privacy() -> None:
    book, emits = feed(None, rep(device="dev-secret-1"), rep(device="dev-secret-2", east_m=30.0, ts=T0 + 5))
    book, votes = incidents.vote(book, vote(emits[0].incident.id, "dev-secret-3", "not_there", T0 + 9), T0 + 9)
    cleared = incidents.clear(book, emits[0].incident.id, T0 + 20, "resolved")
    for ev in emits + votes + cleared:
        alert = to_alert(ev)
        jsonschema.validate(alert, SCHEMA)
        assert "dev-secret" not in json.dumps(alert)
        keys = {"id", "type", "state", "lat", "lon", "heading_deg", "cell", "confidence", "opened_at"}
        keys |= {"updated_at", "expires_at", "version", "evidence"}
        assert set(alert) - {"reason"} == keys
        assert set(alert["evidence"]) == {"probes", "reports", "votes_up", "votes_down"}
        assert alert["cell"] == geo.cell(alert["lat"], alert["lon"], 9)
    versions = [to_alert(e)["version"] for e in emits + votes + cleared]
    assert versions == sorted(set(versions))
    assert to_alert(cleared[0])["reason"] == "resolved"
    assert to_alert(cleared[0])["expires_at"] is None
    assert to_alert(emits[0])["opened_at"] == to_alert(cleared[0])["opened_at"]


def test_bytes_round_trip_and_tombstones() -> None:
    r = rep()
    book, _ = feed(None, r, rep(device="b", east_m=50.0, ts=T0 + 5), rep("road_work", device="c", ts=T0 + 7))
    incidents.vote(book, vote(r["id"], "u1", "still_there", T0 + 9), T0 + 9)
    back = Book.from_bytes(book.to_bytes())
    assert back == book
    incidents.expire(back, T0 + 3600 + 9)  # the crash lapses; its tombstone keeps replays out
    _, replay = incidents.report(back, r, T0 + 3600 + 10)
    assert replay == []
    incidents.expire(back, T0 + 2 * 3600 + 10)
    assert len(back.incidents) == 1 and r["id"] not in back.aliases


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=20))
def test_votes_keep_confidence_in_range_and_the_lifecycle_in_order(votes: list[tuple[int, bool]]) -> None:
    r = rep("closure")
    book, _ = feed(None, r)
    states: list[str] = []
    for i, (dev, up) in enumerate(votes):
        ts = T0 + 10 + i
        book, out = incidents.vote(book, vote(r["id"], f"v{dev}", "still_there" if up else "not_there", ts), ts)
        for e in out:
            assert 0.0 <= e.incident.confidence <= incidents.CAP
            states.append(e.state)
    # opened at most once and first; nothing after cleared
    assert states.count("opened") <= 1 and (not states or states[0] == "opened")
    assert "cleared" not in states[:-1]
    for inc in book.incidents.values():
        assert 0.0 <= inc.confidence(T0 + 100) <= incidents.CAP


# -- updated only on a material change -------------------------------------------------------------
def test_a_burst_of_reports_at_one_spot_tells_only_confidence_steps() -> None:
    """The demo's stalled vehicle: 10 devices 1-3 s apart, GPS noise of metres (was opened + 9 updates)."""
    ts, reports = T0, []
    for i in range(10):
        reports.append(rep("stalled_vehicle", device=f"d{i}", ts=ts, east_m=(-4.0, 3.0, 0.0, 5.0, -2.0)[i % 5]))
        ts += 1 + i % 3
    _, emits = feed(None, *reports)
    assert [e.state for e in emits] == ["opened", "updated", "updated", "updated"]
    # 0.5 → 0.75 → 0.875 → (0.9375 and 0.969 are < 0.1 from what was told) 0.984 → capped 0.99: untold
    assert [e.incident.confidence for e in emits] == pytest.approx([0.5, 0.75, 0.875, 0.984], abs=0.001)
    assert [e.incident.evidence.reports for e in emits] == [1, 2, 3, 6]


def test_a_report_moving_the_mean_30_m_is_told() -> None:
    book, _ = feed(None, *[rep(device=f"d{i}", ts=T0 + i) for i in range(7)])  # confidence capped at 0.99
    book, emits = feed(book, rep(device="far1", ts=T0 + 10, east_m=140.0))
    assert emits == []  # the mean moved 17.5 m
    book, emits = feed(book, rep(device="far2", ts=T0 + 12, east_m=140.0))
    assert [e.state for e in emits] == ["updated"]  # 31 m from the position told
    told = emits[0].incident
    assert geo.distance_m(told.lat, told.lon, *ORIGIN) == pytest.approx(280.0 / 9, abs=0.5)
    book, emits = feed(book, rep(device="far3", ts=T0 + 14, east_m=100.0))
    assert emits == []  # 7 m on from the position told: the drift is measured from what went out


def test_confidence_is_told_when_it_moved_a_step_either_way() -> None:
    r = rep()
    book, _ = feed(None, r, *[rep(device=f"d{i}", ts=T0 + i) for i in (1, 2)])  # told 0.875
    book, emits = feed(book, rep(device="d3", ts=T0 + 3), rep(device="d4", ts=T0 + 4))
    assert emits == []  # 0.9375, 0.969: less than 0.1 from 0.875
    book, emits = feed(book, rep(device="d5", ts=T0 + 5))
    assert [(e.state, round(e.incident.confidence, 3)) for e in emits] == [("updated", 0.984)]
    book, emits = incidents.vote(book, vote(r["id"], "n1", "not_there", T0 + 10), T0 + 10)
    assert [e.state for e in emits] == ["updated"]  # the first denial means something: told at once
    book, emits = incidents.vote(book, vote(r["id"], "n2", "not_there", T0 + 20), T0 + 20)
    assert emits == []  # 0.969 → 0.938: a second denial that moves little is not news
    later = T0 + 1800  # half the hazard's lifetime since its last confirmation: decay × 0.75
    book, emits = incidents.vote(book, vote(r["id"], "n3", "not_there", later), later)
    assert [e.state for e in emits] == ["updated"]
    assert emits[0].incident.confidence == pytest.approx(0.75 * (1 - 0.5**3), abs=0.001)


def test_a_probe_detection_appearing_and_going_is_told() -> None:
    book, _ = feed(None, *[rep(device=f"d{i}", ts=T0 + i) for i in range(7)])
    inc = next(iter(book.incidents.values()))
    assert [e.state for e in incidents.set_probes(book, inc.id, 1, T0 + 20)] == ["updated"]  # 0.99 either way
    assert [e.incident.evidence.probes for e in incidents.set_probes(book, inc.id, 0, T0 + 30)] == [0]


class _Worker:
    """An :class:`Engine` on in-memory tables and an injected clock: reports in, ticks, what it published."""

    def __init__(self) -> None:
        self.engine, self.now = Engine(Tables.in_memory()), T0
        self.alerts: list[dict[str, Any]] = []
        self.incidents: dict[str, list[str]] = {}  # cell → incidents its last condition named

    def send(self, rec: dict[str, Any]) -> None:
        self._take(self.engine.on_report(geo.key_cell(*ORIGIN, 7, 9), rec, 0, self.now))  # votes carry no position
        self.engine.flush(0, self.now)

    def tick(self) -> None:
        self._take(self.engine.tick(self.now))
        self.engine.flush(0, self.now)

    def _take(self, out: Any) -> None:
        self.alerts += [orjson.loads(v) for _, v in out.alerts]
        for k, v in out.conditions:
            self.incidents[k.decode()] = orjson.loads(v)["incidents"] if v is not None else []


def test_an_incident_kept_alive_by_votes_never_drops_out_of_active_early() -> None:
    """Extensions are told before the told expiry passes (the engine drops ``active`` entries at it)."""
    w = _Worker()
    first = rep("stalled_vehicle", device="d0", ts=T0)
    for r in [first, *[rep("stalled_vehicle", device=f"d{i}", ts=T0 + i) for i in range(1, 7)]]:
        w.now = r["ts"]
        w.send(r)
    inc_id = w.alerts[0]["id"]
    cell = geo.cell(*ORIGIN, 9)
    vote_at = [T0 + 120.0 * i for i in range(1, 31)]  # a still_there every 2 min for an hour
    end = vote_at[-1] + 1800.0  # the real end: 30 min after the last confirmation
    for step in range(1, int((end + 60 - T0) / 5)):
        w.now = T0 + 5.0 * step
        if vote_at and w.now >= vote_at[0]:
            w.send(vote(inc_id, f"u{len(vote_at)}", "still_there", vote_at.pop(0)))
        w.tick()
        entry = (w.engine.active.values.get(cell) or {}).get(inc_id)
        if w.now < end:
            assert entry is not None and entry["expires_at"] > w.now, w.now
            assert inc_id in w.incidents.get(cell, []), w.now  # drivers' conditions still show it
        else:
            assert entry is None
    later = [a for a in w.alerts if a["updated_at"] >= T0 + 120]
    # three refreshes of the expiry (each within 5 min of the told one), not 30 updates, then the end
    assert [a["state"] for a in later] == ["updated"] * 3 + ["cleared"]
    assert [a["expires_at"] - a["updated_at"] <= incidents.REFRESH_S for a in later[:3]] == [False] * 3
    assert later[-1]["reason"] == "expired" and later[-1]["updated_at"] == pytest.approx(end, abs=5)
    assert inc_id not in w.incidents[cell]


def test_told_state_round_trips_and_old_books_still_load() -> None:
    r = rep("stalled_vehicle")
    book, _ = feed(None, r, rep("stalled_vehicle", device="b", ts=T0 + 2, east_m=10.0))
    incidents.set_probes(book, r["id"], 1, T0 + 5)
    inc = next(iter(book.incidents.values()))
    assert (inc.told_probes, inc.told_conf, inc.told_expires_at) == (1, pytest.approx(0.875, abs=0.002), T0 + 2 + 1800)
    back = Book.from_bytes(book.to_bytes())
    assert back == book and back.incidents[inc.id].told_lat == inc.lat
    # a book stored before the rule: no told_* keys
    doc = orjson.loads(book.to_bytes())
    for stored in doc["incidents"].values():
        for k in [k for k in stored if k.startswith("told_")]:
            del stored[k]
    old = Book.from_bytes(orjson.dumps(doc))
    loaded = old.incidents[inc.id]
    assert (loaded.told_lat, loaded.told_lon, loaded.told_probes) == (inc.lat, inc.lon, 1)
    assert (loaded.told_conf, loaded.told_expires_at) == (pytest.approx(0.875), T0 + 2 + 1800)  # undecayed
    _, emits = feed(old, rep("stalled_vehicle", device="c", ts=T0 + 8))  # 0.9375: nothing new to tell
    assert emits == []
    _, emits = incidents.vote(old, vote(r["id"], "n1", "not_there", T0 + 9), T0 + 9)
    assert [e.state for e in emits] == ["updated"]
