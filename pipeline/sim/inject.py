"""Injected events applied to SUMO at their times, and the ground truth they leave behind.

The truth is what SUMO really did, not what the scenario asked for: a stall starts when
the chosen vehicle actually stands (≤ 1 m/s at its stop), a crash when a rear-end pair was
found on the lane and stopped; each records where (the vehicles' positions) and until when.
An event that found no vehicle to happen to is recorded as ``injected=False`` and left out
of the detection rate (it would measure the scenario, not Traverz).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.sim.scenario import Event, Scenario
from pipeline.sim.sumo import Sumo, TraCIError, Vehicle

GIVE_UP_S = 180.0  # an event that found no vehicle for this long is not injected
PAIR_GAP_M = 60.0  # a crash: a follower this close behind cannot stop short and ends up against the leader
ALERT_TYPE = {"stall": "stalled_vehicle", "crash": "crash", "road_work": "road_work", "closure": "closure"}


@dataclass
class TrueIncident:
    """One incident as it happened in SUMO."""

    index: int  # position among the scenario's events
    kind: str
    edge: str
    lane: int
    planned_s: float
    lat: float = 0.0
    lon: float = 0.0
    heading: float = 0.0
    start_s: float | None = None
    end_s: float | None = None
    injected: bool = False
    vehicles: list[str] = field(default_factory=list)

    @property
    def alert_type(self) -> str:
        return ALERT_TYPE[self.kind]

    def active(self, t: float) -> bool:
        return self.start_s is not None and self.start_s <= t and (self.end_s is None or t < self.end_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "type": self.alert_type,
            "edge": self.edge,
            "lane": self.lane,
            "lat": round(self.lat, 6),
            "lon": round(self.lon, 6),
            "start_s": self.start_s,
            "end_s": self.end_s,
            "injected": self.injected,
        }


@dataclass
class _Live:
    event: Event
    truth: TrueIncident
    state: str = "waiting"  # waiting → arming (stall braking) → on → over
    restore: Any = None


class Injector:
    def __init__(self, sc: Scenario, sim: Sumo) -> None:
        self.sim = sim
        self.live: list[_Live] = []
        self.truth: list[TrueIncident] = []
        for i, e in enumerate(sc.events):
            if e.kind in ALERT_TYPE:
                # a closure is where drivers are stopped: its barrier at the start of the edge
                pos = 0.0 if e.kind == "closure" and e.pos_m < 0 else e.pos_m
                lat, lon, heading = sim.net.point(e.edge, e.lane, pos)
                t = TrueIncident(i, e.kind, e.edge, e.lane, e.at_s, lat, lon, heading)
                self.truth.append(t)
                self.live.append(_Live(e, t))

    def tick(self, t: float, vehicles: dict[str, Vehicle]) -> list[str]:
        """Apply what is due at sim time ``t``; returns human-readable news (for the live output)."""
        news: list[str] = []
        for lv in self.live:
            e, tr = lv.event, lv.truth
            if lv.state == "waiting" and t >= e.at_s:
                if t - e.at_s > GIVE_UP_S:
                    lv.state = "over"
                    news.append(f"{e.kind} on {e.edge}: no vehicle came by, not injected")
                    continue
                news += self._begin(lv, t)
            elif lv.state == "arming" and e.kind == "crash":
                news += self._follower(lv, t, vehicles)
            elif lv.state == "arming":
                v = vehicles.get(tr.vehicles[0])
                if v is None:
                    lv.state = "over"
                elif v.speed <= 1.0:
                    self.sim.hold(v.id)
                    tr.start_s, tr.injected, lv.state = t, True, "on"
                    tr.lat, tr.lon = v.lat, v.lon
                    news.append(f"TRUTH stall: {v.id} stands on {e.edge} lane {v.lane}")
            elif lv.state == "on":
                news += self._maybe_end(lv, t, vehicles)
        return news

    def _follower(self, lv: _Live, t: float, vehicles: dict[str, Vehicle]) -> list[str]:
        """The crash's second vehicle: once it stands behind the leader it stays (and the lane is blocked)."""
        tr = lv.truth
        lead, fol = vehicles.get(tr.vehicles[0]), vehicles.get(tr.vehicles[1])
        if lead is not None:
            tr.lat, tr.lon = lead.lat, lead.lon
        if fol is None or lead is None:
            tr.vehicles = tr.vehicles[:1]
        elif fol.speed > 1.0:
            if t - (tr.start_s or t) < 30.0:
                return []
            self.sim.release(fol.id)  # it got round after all: a one-vehicle crash
            tr.vehicles = tr.vehicles[:1]
        else:
            self.sim.stop_dead(fol.id)
            tr.lat, tr.lon = (lead.lat + fol.lat) / 2, (lead.lon + fol.lon) / 2
        lv.state = "on"
        return [f"TRUTH crash: {' and '.join(tr.vehicles)} on {lv.event.edge} lane {lv.event.lane}"]

    def _begin(self, lv: _Live, t: float) -> list[str]:
        e, tr, sim = lv.event, lv.truth, self.sim
        pos = e.pos_m if e.pos_m >= 0 else sim.net.net.getEdge(e.edge).getLength() / 2
        try:
            if e.kind == "stall":
                vid = sim.stall_candidate(e.edge, e.lane, pos)
                if vid is None:
                    return []
                sim.stall(vid)
                tr.vehicles, lv.state = [vid], "arming"
                return []
            if e.kind == "crash":
                pair = sim.leader_follower(e.edge, e.lane, pos, PAIR_GAP_M)
                if pair is None:
                    return []
                sim.stop_dead(pair[0])  # the leader stops dead (hits something)
                sim.keep_lane(pair[1])  # the follower brakes as hard as it can, no swerving
                tr.vehicles = list(pair)
                tr.start_s, tr.injected, lv.state = t, True, "arming"
                return []
            if e.kind == "road_work":
                lv.restore = sim.close_lanes(e.edge, [e.lane])
            else:  # closure: every lane, to every car (drivers who meet it turn off: pipeline/sim/run.py)
                lv.restore = sim.close_edge(e.edge)
            tr.start_s, tr.injected, lv.state = t, True, "on"
            return [f"TRUTH {e.kind}: {e.edge} {'lane ' + str(e.lane) if e.kind == 'road_work' else 'closed'}"]
        except TraCIError as exc:
            return [f"{e.kind} on {e.edge}: {exc}"]

    def _maybe_end(self, lv: _Live, t: float, vehicles: dict[str, Vehicle]) -> list[str]:
        e, tr, sim = lv.event, lv.truth, self.sim
        assert tr.start_s is not None
        if t < tr.start_s + e.duration_s:
            return []
        if e.kind in ("crash", "stall"):
            for vid in tr.vehicles:
                if vid in vehicles:
                    sim.release(vid)
        else:  # road work, closure
            sim.reopen_lanes(lv.restore)
        tr.end_s, lv.state = t, "over"
        return [f"TRUTH {e.kind} on {e.edge} over"]

    def by_index(self, index: int) -> TrueIncident:
        return next(tr for tr in self.truth if tr.index == index)

    def active(self, t: float) -> list[TrueIncident]:
        return [tr for tr in self.truth if tr.active(t)]
