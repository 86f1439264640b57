"""A scenario's detection score without the stack: SUMO at full speed feeding an in-process Engine.

The detector lab. ``traverz simulate --offline`` drives the same SUMO scenario, the same
phones (GPS error, coverage gaps, backlogs) and the same witnesses' reports as a live run,
but hands the pings straight to :class:`pipeline.engine.Engine` with ``now`` = the ping's
simulated time (plus a fixed processing delay), instead of posting them through ingest,
Kafka and a worker on the wall clock. A 480-s scenario takes seconds to tens of seconds
instead of minutes, so the detectors can be tuned against SUMO's ground truth and every
scenario re-scored after each change. What it does not measure: delivery to subscribers,
reroutes, and anything the transport adds (the live run, :mod:`pipeline.sim.run`, does).

Records are grouped as ingest groups them (one record per res-7 key per post), and every
record of one res-7 key goes to one partition, so per-partition state behaves as in a
worker. Votes are not cast (a voter needs the report id ingest returns).

For a false-alarm bound, ``--seed``/``--duration`` run a scenario over many seeds or longer
(:func:`pipeline.sim.scenario.vary`); :func:`summary` pools the runs over the vehicle-hours after
the warm-up (when an alert can be a false alarm) and gives the rate's 95 % upper bound, and
every false alarm carries what SUMO had within :data:`AROUND_M` when it opened.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline import geo
from pipeline.engine import Engine, Output, Tables
from pipeline.pings import with_cells
from pipeline.sim import score
from pipeline.sim.inject import Injector
from pipeline.sim.phones import Phone, chosen
from pipeline.sim.run import SPAM_EVERY_S, WITNESS_M, _gaps, _noise
from pipeline.sim.scenario import Scenario
from pipeline.sim.sumo import Network, Sumo, Vehicle, net_path

T0 = 1_800_000_000.0  # the simulated epoch: sim time t is ts T0 + t
DELAY_S = 0.3  # ingest + Kafka + worker, as measured end to end at low load
TICK_S = 0.5  # the worker's tick
PARTITIONS = 4
AROUND_M = 100.0


@dataclass
class Offline:
    """Everything a run observed."""

    sc: Scenario
    opened: dict[str, score.Opened] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    vehicle_s: float = 0.0
    scored_vehicle_s: float = 0.0  # after the warm-up: the time in which an alert can be a false alarm
    vehicles: int = 0
    pings: int = 0
    reports: int = 0
    wall_s: float = 0.0
    around: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert id → what SUMO had there


def _around(lat: float, lon: float, vehicles: dict[str, Vehicle]) -> dict[str, Any]:
    """SUMO's vehicles within :data:`AROUND_M` of an alert when it opened: a false alarm's story."""
    near = [v for v in vehicles.values() if geo.distance_m(lat, lon, v.lat, v.lon) <= AROUND_M]
    return {
        "vehicles": len(near),
        "standing": sum(1 for v in near if v.speed < 1.0),
        "edges": sorted({v.edge for v in near}),
    }


def _partition(key7: str) -> int:
    return int(key7, 16) % PARTITIONS


def _collect(run: Offline, out: Output) -> None:
    for _, raw in out.alerts:
        if raw is None:
            continue
        a = orjson.loads(raw)
        run.alerts.append(a)
        aid = str(a["id"])
        if aid not in run.opened and a["state"] != "cleared":
            t = float(a["opened_at"]) - T0
            run.opened[aid] = score.Opened(
                aid, str(a["type"]), float(a["lat"]), float(a["lon"]), t, float(a["opened_at"])
            )


def _post(engine: Engine, run: Offline, device: str, batch: list[dict[str, Any]], now: float) -> None:
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in batch:
        p = dict(p, device_id=device)
        by_key[geo.cell(p["lat"], p["lon"], 7)].append(p)
    for key7, pings in by_key.items():
        _collect(run, engine.on_pings(with_cells(pings), _partition(key7), now))
    run.pings += len(batch)


def _report(
    engine: Engine, run: Offline, device: str, type_: str, lat: float, lon: float, heading: float, ts: float
) -> None:
    key7 = geo.cell(lat, lon, 7)
    run.reports += 1
    rec = {
        "v": 1,
        "kind": "report",
        "id": f"r-{key7}-{run.reports:08d}",
        "device_id": device,
        "type": type_,
        "lat": lat,
        "lon": lon,
        "heading_deg": heading % 360.0,
        "ts": ts,
        "ingest_ts": ts + DELAY_S,
    }
    _collect(run, engine.on_report(key7, rec, _partition(key7), ts + DELAY_S))


def simulate(sc: Scenario) -> tuple[Offline, Injector]:
    """Run ``sc`` through SUMO and an in-memory Engine; returns what was published and the truth."""
    started = time.time()
    rng = random.Random(sc.seed)
    net = Network(net_path(sc.network))
    sim = Sumo(net, sc.seed, sc.step_s)
    run = Offline(sc)
    engine = Engine(Tables.in_memory())
    ph = sc.phones
    noisy_share, noisy_sigma = _noise(sc)
    gaps = _gaps(sc, net)
    spam = [(e, net.point(e.edge, e.lane, e.pos_m)) for e in sc.events if e.kind == "false_report"]
    spam_done: dict[int, int] = {}
    phones: dict[str, Phone] = {}
    witnessed: set[tuple[str, int]] = set()
    salt = f"{sc.seed}"
    next_tick = 0.0
    try:
        sim.add_demand(sc.demand, sc.events, sc.duration_s, rng)
        inj = Injector(sc, sim)
        while sim.t + sc.step_s <= sc.duration_s + 1e-9:
            vehicles, arrived = sim.step()
            t = sim.t
            for vid in arrived:
                phones.pop(vid, None)
            inj.tick(t, vehicles)
            ts = T0 + t
            active = inj.active(t)
            open_gaps = [(lat, lon, e.radius_m) for e, lat, lon in gaps if e.at_s <= t < e.ends_s]
            run.vehicle_s += sc.step_s * len(vehicles)
            if t >= sc.warmup_s:
                run.scored_vehicle_s += sc.step_s * len(vehicles)
            for vid, v in vehicles.items():
                phone = phones.get(vid)
                if phone is None:
                    sigma = noisy_sigma if chosen(vid, noisy_share, salt + "gps") else ph.accuracy_m / 1.5
                    dev = f"{sc.name}-{vid}"
                    phone = phones[vid] = Phone(dev, "", sigma, t, next_fix_s=t)
                    run.vehicles += 1
                if t >= phone.next_fix_s:
                    phone.next_fix_s += ph.fix_interval_s or ph.ping_interval_s
                    phone.backlog.append(phone.sample(v, ts, rng))
                if t >= phone.next_ping_s:
                    phone.next_ping_s += ph.ping_interval_s
                    if not any(geo.distance_m(v.lat, v.lon, la, lo) <= r for la, lo, r in open_gaps):
                        _post(engine, run, phone.device, phone.take(None), ts + DELAY_S)
                for tr in active:
                    key = (vid, tr.index)
                    if (
                        v.edge == tr.edge
                        and key not in witnessed
                        and geo.distance_m(v.lat, v.lon, tr.lat, tr.lon) <= WITNESS_M
                    ):
                        witnessed.add(key)
                        if chosen(vid, ph.report_share, f"{salt}rep{tr.index}") and vid not in tr.vehicles:
                            _report(engine, run, phone.device, tr.alert_type, v.lat, v.lon, v.heading, ts)
            for i, (e, (lat, lon, heading)) in enumerate(spam):
                k = spam_done.get(i, 0)
                if k < e.count and t >= e.at_s + k * SPAM_EVERY_S:
                    spam_done[i] = k + 1
                    _report(engine, run, f"spam-{sc.name}-{i}", e.type, lat, lon, heading, ts)
            while next_tick <= t:
                _collect(run, engine.tick(T0 + next_tick + DELAY_S))
                next_tick += TICK_S
            for aid in run.opened.keys() - run.around.keys():
                run.around[aid] = _around(run.opened[aid].lat, run.opened[aid].lon, vehicles)
        run.wall_s = time.time() - started
        return run, inj
    finally:
        sim.close()


def result(run: Offline, inj: Injector) -> dict[str, Any]:
    """The score document of an offline run (the live run's shape, minus delivery and reroutes)."""
    sc, end = run.sc, run.sc.duration_s
    truths = [t for t in inj.truth if t.injected and t.start_s is not None]
    inputs = score.Inputs(
        truths=[score.Truth(t.alert_type, t.lat, t.lon, float(t.start_s or 0), t.end_s or end, t.edge) for t in truths],
        opened=list(run.opened.values()),
        vehicle_hours=run.vehicle_s / 3600.0,
        warmup_s=sc.warmup_s,
    )
    doc = score.score(inputs)
    for a in doc["false_alarms"]["alerts"]:
        a["sumo"] = run.around.get(a["id"])
    return {
        "scenario": sc.name,
        "mode": "offline",
        "network": sc.network,
        "seed": sc.seed,
        "duration_s": sc.duration_s,
        "vehicle_hours_scored": round(run.scored_vehicle_s / 3600.0, 2),
        "vehicles": run.vehicles,
        "speedup": sc.duration_s / max(run.wall_s, 1e-3),
        "truth": [t.as_dict() for t in truths],
        "pings": run.pings,
        "reports": run.reports,
        "wall_s": round(run.wall_s, 1),
        "score": doc,
    }


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled over runs: false alarms per 1,000 scored vehicle-hours with its 95 % upper bound."""
    fa = sum(r["score"]["false_alarms"]["count"] for r in results)
    vh = sum(r["vehicle_hours_scored"] for r in results)
    upper = score.poisson_upper(fa) * 1000.0 / vh if vh else None
    runs = [
        {
            "scenario": r["scenario"],
            "seed": r["seed"],
            "duration_s": r["duration_s"],
            "vehicle_hours_scored": r["vehicle_hours_scored"],
            "false_alarms": r["score"]["false_alarms"]["alerts"],
            "detected": {ty: f"{d['detected']}/{d['incidents']}" for ty, d in r["score"]["detection"].items()},
        }
        for r in results
    ]
    per = 1000.0 * fa / vh if vh else None
    return {
        "runs": runs,
        "false_alarms": fa,
        "vehicle_hours_scored": round(vh, 2),
        "per_1000_vh": per,
        "per_1000_vh_upper_95": upper,
    }


def main(
    paths: list[str],
    *,
    score_all: bool,
    out: str | Path,
    seeds: list[int] | None = None,
    duration_s: float | None = None,
) -> int:
    """``traverz simulate --offline``: the score table of the scenarios, detectors only."""
    from pipeline.sim.command import pick
    from pipeline.sim.report import table

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for sc in pick(paths, all_=score_all, seeds=seeds, duration_s=duration_s):
        run, inj = simulate(sc)
        res = result(run, inj)
        (folder / f"{sc.name}.offline.json").write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
        results.append(res)
    print(table(results))
    total = summary(results)
    (folder / "offline.json").write_bytes(orjson.dumps(total, option=orjson.OPT_INDENT_2))
    print(
        f"false alarms {total['false_alarms']} in {total['vehicle_hours_scored']:.1f} veh-h after the warm-up: "
        f"≤ {total['per_1000_vh_upper_95'] or 0:.2f}/1000 veh-h (95 % upper bound)"
    )
    print(f"offline (SUMO → engine, no delivery or reroutes); results: {folder}/<scenario>.offline.json, offline.json")
    return 0
