"""Scenario files (TOML, ``scenarios/*.toml``): network, demand, phones, injected events.

A scenario says everything a run needs, so a score is reproducible from the file and its
seed. Positions are SUMO edges (and a lane index / offset along it): the events happen on
the road network, and the ground truth knows exactly where. Durations and times are
simulation seconds from the start of the run.

Event kinds: ``stall`` (one vehicle stops on a lane and stays), ``crash`` (a vehicle and its
follower stop abruptly; the lane is blocked for the duration), ``road_work`` (a lane closed,
passing drivers report it), ``closure`` (every lane of an edge blocked: the blocking
incident of the rerouting score), ``false_report`` (one device posts reports of something
that is not there), ``gps_noise`` (a share of the phones with a poor fix), ``coverage_gap``
(no network inside a circle: phones buffer and upload in a batch afterwards),
``congestion`` (a burst of demand through a corridor, no incident: the false-alarm test).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

KINDS = ("stall", "crash", "road_work", "closure", "false_report", "gps_noise", "coverage_gap", "congestion")
INCIDENT_KINDS = ("stall", "crash", "road_work", "closure")  # what the ground truth scores


class ScenarioError(ValueError):
    """A scenario file that cannot be run."""


@dataclass(frozen=True)
class Demand:
    vehicles_per_hour: float = 3000.0  # random trips over the whole network
    min_trip_m: float = 1500.0
    # a steady flow through a corridor (so incidents there have traffic around them)
    corridor: tuple[str, ...] = ()
    corridor_vehicles_per_hour: float = 0.0
    decel: float = 4.5  # m/s², SUMO's default passenger car: how hard drivers brake for lights and queues


@dataclass(frozen=True)
class Phones:
    ping_interval_s: float = 5.0  # a post this often (the design's ~5 s)
    fix_interval_s: float = 0.0  # a GPS fix this often, all posted together; 0: one fix per post
    report_share: float = 0.3  # of drivers who see an incident: report it (or vote on its report)
    subscriber_share: float = 0.2  # hold a /v1/stream subscription with their destination
    accept_reroute_share: float = 0.5  # of subscribers offered a reroute: take it
    resubscribe_s: float = 15.0  # a subscriber re-sends its position and remaining route this often
    accuracy_m: float = 5.0


@dataclass(frozen=True)
class Event:
    kind: str
    at_s: float = 0.0
    duration_s: float = 0.0
    edge: str = ""
    lane: int = 0
    pos_m: float = -1.0  # offset along the edge; < 0: the middle
    # crash/closure: block the lane(s) / road; road_work: the closed lane
    count: int = 0  # false_report: reports posted
    type: str = "crash"  # false_report: the claimed incident type
    share: float = 0.0  # gps_noise: share of phones affected
    sigma_m: float = 0.0  # gps_noise: position error (1 σ)
    radius_m: float = 0.0  # coverage_gap
    vehicles_per_hour: float = 0.0  # congestion
    route: tuple[str, ...] = ()  # congestion: from/to (and via) edges

    @property
    def ends_s(self) -> float:
        return self.at_s + self.duration_s


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    network: str = "DRT"  # a Berlin net shipped in eclipse-sumo (tools/game/<name>/osm.net.xml) or a path
    description: str = ""
    seed: int = 7
    duration_s: float = 600.0
    step_s: float = 1.0
    speedup: float = 8.0
    warmup_s: float = 0.0  # detections before this are not scored (the network fills up)
    demand: Demand = field(default_factory=Demand)
    phones: Phones = field(default_factory=Phones)
    events: tuple[Event, ...] = ()

    def incidents(self) -> list[Event]:
        return [e for e in self.events if e.kind in INCIDENT_KINDS]


def _build(cls: type[Any], doc: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(doc) - known
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}
    try:
        return cls(**args)
    except TypeError as exc:
        raise ScenarioError(f"{where}: {exc}") from exc


def _check(sc: Scenario) -> None:
    if sc.duration_s <= 0 or sc.step_s <= 0 or sc.speedup < 1.0:
        raise ScenarioError(f"{sc.name}: duration_s and step_s > 0, speedup >= 1")
    if sc.phones.ping_interval_s < sc.step_s:
        raise ScenarioError(f"{sc.name}: ping_interval_s below step_s")
    for i, e in enumerate(sc.events):
        where = f"{sc.name}: events[{i}] ({e.kind})"
        if e.kind not in KINDS:
            raise ScenarioError(f"{where}: kind must be one of {', '.join(KINDS)}")
        if e.kind in (*INCIDENT_KINDS, "false_report", "coverage_gap") and not e.edge:
            raise ScenarioError(f"{where}: needs an edge")
        if e.kind in (*INCIDENT_KINDS, "coverage_gap", "congestion") and e.duration_s <= 0:
            raise ScenarioError(f"{where}: needs duration_s > 0")
        if e.kind == "congestion" and (len(e.route) < 2 or e.vehicles_per_hour <= 0):
            raise ScenarioError(f"{where}: needs route (>= 2 edges) and vehicles_per_hour")
        if e.kind == "gps_noise" and not (0 < e.share <= 1 and e.sigma_m > 0):
            raise ScenarioError(f"{where}: needs 0 < share <= 1 and sigma_m > 0")
        if e.kind == "coverage_gap" and e.radius_m <= 0:
            raise ScenarioError(f"{where}: needs radius_m > 0")
        if e.kind == "false_report" and e.count <= 0:
            raise ScenarioError(f"{where}: needs count > 0")


def parse(doc: dict[str, Any], path: Path) -> Scenario:
    """A scenario from a decoded TOML document (``path`` names it)."""
    doc = dict(doc)
    name = str(doc.pop("name", path.stem))
    demand = _build(Demand, doc.pop("demand", {}), f"{name}: [demand]")
    phones = _build(Phones, doc.pop("phones", {}), f"{name}: [phones]")
    events = tuple(_build(Event, e, f"{name}: events[{i}]") for i, e in enumerate(doc.pop("events", [])))
    sc: Scenario = _build(Scenario, {**doc, "name": name, "path": path}, name)
    sc = replace(sc, demand=demand, phones=phones, events=events)
    _check(sc)
    return sc


def load(path: str | Path) -> Scenario:
    """Read and check one scenario file."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{p}: {exc}") from exc
    return parse(doc, p)


def repo_scenarios(folder: Path | None = None) -> list[Path]:
    """Every scenario file in the repository's ``scenarios/`` folder, sorted."""
    base = folder or Path(__file__).resolve().parents[2] / "scenarios"
    return sorted(base.glob("*.toml"))


def seeds(spec: str) -> list[int]:
    """``--seed`` values: ``7``, ``1-40`` or ``1,5,9`` (ranges inclusive)."""
    out: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError as exc:
            raise ValueError(f"not a seed, a range A-B or a list: {spec!r}") from exc
        if last < first:
            raise ValueError(f"empty seed range: {part!r}")
        out.extend(range(first, last + 1))
    return out


def vary(sc: Scenario, *, seed: int | None = None, duration_s: float | None = None) -> Scenario:
    """``sc`` with another seed and/or length (``traverz simulate --seed/--duration``), renamed for its files.

    Another seed is another sample of the same scenario (trips, SUMO's drivers, the phones' GPS
    error and who reports), so seeds pile up vehicle-hours for a false-alarm bound without a file
    each. A new length keeps every event's times, except that an event lasting to the scenario's
    end (a rush-hour burst) lasts to the new end; an event starting after a shorter end is dropped.
    """
    name = sc.name
    if seed is not None:
        sc, name = replace(sc, seed=seed), f"{name}-s{seed}"
    if duration_s is not None:
        old, new = sc.duration_s, float(duration_s)
        events = tuple(
            replace(e, duration_s=new - e.at_s) if e.duration_s > 0 and e.ends_s >= old else e
            for e in sc.events
            if e.at_s < new
        )
        sc, name = replace(sc, duration_s=new, events=events), f"{name}-d{new:.0f}"
    sc = replace(sc, name=name)
    _check(sc)
    return sc
