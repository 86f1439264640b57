"""One scenario through a running stack: SUMO steps, phones post, drivers subscribe, truth is kept.

The loop is paced by :class:`~pipeline.sim.clock.SimClock` (ahead of the wall clock by
at most ``lag``, catching up at ``speedup``). Each step: SUMO advances, injected events are
applied, every phone whose turn it is samples its vehicle, witnesses report and vote,
subscribers re-subscribe, reroutes offered since the last step are taken or declined.
Everything the score needs is collected in :class:`Run`; :func:`result` turns it into the
result document.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline import geo
from pipeline.settings import Settings
from pipeline.sim import score
from pipeline.sim.clock import SimClock
from pipeline.sim.drivers import WITNESS_M as WITNESS_M  # re-exported: pipeline/sim/offline.py
from pipeline.sim.drivers import Drivers
from pipeline.sim.inject import Injector
from pipeline.sim.listen import Subscriber, Tap
from pipeline.sim.phones import Phone, Uplink, chosen
from pipeline.sim.reroute import Rerouter
from pipeline.sim.scenario import Event, Scenario
from pipeline.sim.sumo import Network, Sumo, Vehicle, net_path

VOTE_M = 100.0
SPAM_EVERY_S = 60.0
ROUTE_POINTS = 2000  # the most a subscribe's route may carry (pipeline/push/stream.py)
TAIL_S = 600.0  # at most this long after the end for the closure group to arrive


@dataclass
class Endpoints:
    ingest_url: str
    push_url: str
    bootstrap: str


@dataclass
class Run:
    sc: Scenario
    net: Network
    clock: SimClock
    inj: Injector
    tap: Tap
    uplink: Uplink
    rerouter: Rerouter
    drivers: Drivers
    vehicle_s: float = 0.0
    vehicles_seen: int = 0
    subs: dict[str, Subscriber] = field(default_factory=dict)  # connected now
    subs_seen: dict[str, Subscriber] = field(default_factory=dict)  # every subscriber of the run
    upstream: dict[int, dict[str, float | None]] = field(default_factory=dict)  # truth → vehicle → reached
    matched: set[str] = field(default_factory=set)  # alert ids already looked at for upstream tracking
    wall_s: float = 0.0
    end_s: float = 0.0  # sim time SUMO stopped at (after the tail)
    behind_s: float = 0.0  # worst lag of the loop behind its schedule


def _gaps(sc: Scenario, net: Network) -> list[tuple[Event, float, float]]:
    out = []
    for e in sc.events:
        if e.kind == "coverage_gap":
            lat, lon, _ = net.point(e.edge, e.lane, e.pos_m)
            out.append((e, lat, lon))
    return out


def _noise(sc: Scenario) -> tuple[float, float]:
    """(share, sigma_m) of phones with a poor fix; (0, 0) without a gps_noise event."""
    for e in sc.events:
        if e.kind == "gps_noise":
            return e.share, e.sigma_m
    return 0.0, 0.0


async def simulate(
    sc: Scenario,
    ends: Endpoints,
    s: Settings,
    *,
    speedup: float | None = None,
    say: Callable[[str], None] | None = None,
    progress: Callable[[Run, float], None] | None = None,
) -> Run:
    """Run ``sc`` against the stack at ``ends``; returns everything observed."""
    rng = random.Random(sc.seed)
    net = Network(net_path(sc.network))
    sim = Sumo(net, sc.seed, sc.step_s)
    try:
        sim.add_demand(sc.demand, sc.events, sc.duration_s, rng)
        inj = Injector(sc, sim)
        tap = Tap(ends.bootstrap, net.bbox())
        await tap.start()
        uplink = Uplink(ends.ingest_url, s)
        clock = SimClock.start(sc.duration_s, speedup or sc.speedup)
        drivers = Drivers(sim, uplink, sc.phones.report_share, f"{sc.seed}")
        run = Run(sc, net, clock, inj, tap, uplink, Rerouter(sim), drivers)
        try:
            await _loop(run, sim, ends, rng, say, progress)
            _tail(run, sim)
            run.end_s = sim.t
            await uplink.drain()
            await asyncio.sleep(3.0)  # the last pings' alerts are a second or two behind
        finally:
            for sub in run.subs.values():
                await sub.close()
            await uplink.close()
            await tap.stop()
        return run
    finally:
        sim.close()


async def _loop(
    run: Run,
    sim: Sumo,
    ends: Endpoints,
    rng: random.Random,
    say: Callable[[str], None] | None,
    progress: Callable[[Run, float], None] | None,
) -> None:
    sc, clock, uplink = run.sc, run.clock, run.uplink
    ph = sc.phones
    noisy_share, noisy_sigma = _noise(sc)
    gaps = _gaps(sc, run.net)
    phones: dict[str, Phone] = {}
    spam = [(e, run.net.point(e.edge, e.lane, e.pos_m)) for e in sc.events if e.kind == "false_report"]
    spam_token = {id(e): uplink.token(f"spam-{sc.name}-{i}-{clock.wall0:.0f}") for i, (e, _) in enumerate(spam)}
    spam_done: dict[int, int] = {}
    voted: set[tuple[str, str]] = set()
    started = time.time()
    salt = f"{sc.seed}"
    while sim.t + sc.step_s <= sc.duration_s + 1e-9:
        due = clock.due(sim.t + sc.step_s)
        wait = due - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            run.behind_s = max(run.behind_s, -wait)
            await asyncio.sleep(0)  # let the uplink and sockets breathe
        vehicles, arrived = sim.step()
        t = sim.t
        clock.mark(t)
        run.rerouter.arrived(arrived, t)
        for vid in arrived:
            phones.pop(vid, None)
            sub = run.subs.pop(vid, None)
            if sub is not None:
                await sub.close()
        for line in run.inj.tick(t, vehicles):
            if say:
                say(f"[t={t:5.0f}s] {line}")
        ts = clock.ts(t)
        active = run.inj.active(t)
        open_gaps = [(lat, lon, e.radius_m) for e, lat, lon in gaps if e.at_s <= t < e.ends_s]
        for vid, v in vehicles.items():
            run.vehicle_s += sc.step_s
            phone = phones.get(vid)
            if phone is None:
                sigma = noisy_sigma if chosen(vid, noisy_share, salt + "gps") else ph.accuracy_m / 1.5
                dev = f"{sc.name}-{vid}-{clock.wall0:.0f}"
                phone = phones[vid] = Phone(dev, uplink.token(dev), sigma, t, next_fix_s=t)
                run.vehicles_seen += 1
                if chosen(vid, ph.subscriber_share, salt + "sub"):
                    sub = run.subs[vid] = run.subs_seen[vid] = Subscriber(vid, ends.push_url, phone.token)
                    sub.start()
            if t >= phone.next_fix_s:  # a GPS fix (every ping_interval_s unless fix_interval_s is shorter)
                phone.next_fix_s += ph.fix_interval_s or ph.ping_interval_s
                phone.backlog.append(phone.sample(v, ts, rng))
            if t >= phone.next_ping_s:  # a post: every fix not yet sent, unless there is no coverage
                phone.next_ping_s += ph.ping_interval_s
                if not any(geo.distance_m(v.lat, v.lon, la, lo) <= r for la, lo, r in open_gaps):
                    uplink.send_pings(phone, None)
                _vote(run, v, phone, voted, active, salt)
        run.drivers.tick(vehicles, phones, active, ts, t)
        for e, (lat, lon, heading) in spam:
            k = spam_done.get(id(e), 0)
            if k < e.count and t >= e.at_s + k * SPAM_EVERY_S:
                spam_done[id(e)] = k + 1
                uplink.report(spam_token[id(e)], e.type, lat, lon, heading, ts)
        _subscriptions(run, sim, vehicles, t)
        _track_upstream(run, sim, vehicles, t)
        closed = frozenset(tr.edge for tr in active if tr.kind == "closure")
        news = run.rerouter.apply(run.subs, vehicles, t, chosen_share=ph.accept_reroute_share, salt=salt, closed=closed)
        for line in news:
            if say:
                say(f"[t={t:5.0f}s] {line}")
        if say:
            _news(run, say, t)
        if progress:
            progress(run, t)
    run.wall_s = time.time() - started


def _tail(run: Run, sim: Sumo) -> None:
    """SUMO alone (no phones, no pacing) after the end until the closure group arrived: their whole trip counts."""
    end = run.sc.duration_s + TAIL_S
    while run.rerouter.waiting(run.drivers.stranded) and sim.t + run.sc.step_s <= end:
        vehicles, arrived = sim.step()
        run.rerouter.arrived(arrived, sim.t)
        run.inj.tick(sim.t, vehicles)
        run.drivers.tick(vehicles, {}, run.inj.active(sim.t), 0.0, sim.t)


def _news(run: Run, say: Callable[[str], None], t: float) -> None:
    """What the system published since the last step, one line each (the live output)."""
    while not run.tap.news.empty():
        kind, doc = run.tap.news.get_nowait()
        if kind == "alert":
            why = f" ({doc['reason']})" if doc.get("reason") else ""
            say(
                f"[t={t:5.0f}s] ALERT {doc['state']:<7} {doc['type']:<15} {doc['id']} at {doc['lat']:.5f},"
                f"{doc['lon']:.5f} conf {doc['confidence']:.2f}{why}"
            )
        else:
            say(f"[t={t:5.0f}s] condition {doc['cell']}: level {doc['level_before']} → {doc['level_now']}")


def _vote(run: Run, v: Vehicle, phone: Phone, voted: set[tuple[str, str]], active: list[Any], salt: str) -> None:
    for rid in run.uplink.reports_near(v.lat, v.lon, v.heading, VOTE_M):
        key = (v.id, rid)
        if key in voted:
            continue
        voted.add(key)
        if chosen(v.id, run.sc.phones.report_share, salt + rid):
            lat, lon, _, _ = run.uplink.report_ids[rid]
            there = any(geo.distance_m(lat, lon, tr.lat, tr.lon) <= score.MATCH_M for tr in active)
            run.uplink.vote(phone.token, rid, there)


def _subscriptions(run: Run, sim: Sumo, vehicles: dict[str, Vehicle], t: float) -> None:
    every = run.sc.phones.resubscribe_s
    for vid, sub in run.subs.items():
        v = vehicles.get(vid)
        if v is None or (t - sub.subscribed_s < every and sub.subscribed_s >= 0):
            continue
        sub.subscribed_s = t
        # the start of the last edge: an exit edge ends on the network's rim, a junction no road
        # leads back from, which the push worker's router would snap elsewhere (and plan another route)
        dest = run.rerouter.polyline([sim.destination(vid)])[:1]
        msg: dict[str, Any] = {
            "type": "subscribe",
            "lat": round(v.lat, 6),
            "lon": round(v.lon, 6),
            "heading_deg": round(v.heading % 360.0, 1),
            "speed_mps": round(min(89.0, v.speed), 2),
        }
        if dest:  # the push worker plans along the route the driver drives (and offers reroutes off it)
            msg["destination"] = {"lat": round(dest[-1][0], 6), "lon": round(dest[-1][1], 6)}
            line = run.rerouter.polyline(sim.remaining_route(vid))[:ROUTE_POINTS]
            if len(line) >= 2:
                msg["route"] = [[round(lat, 6), round(lon, 6)] for lat, lon in line]
        sub.subscribe(msg)


def _track_upstream(run: Run, sim: Sumo, vehicles: dict[str, Vehicle], t: float) -> None:
    """When an incident is first detected: which subscribers are heading into it; then when they get there."""
    for seen in run.tap.alerts:
        a = seen.alert
        aid = str(a["id"])
        if aid in run.matched or a.get("state") == "cleared":
            continue
        run.matched.add(aid)
        for tr in run.inj.truth:
            if tr.index in run.upstream or tr.start_s is None or tr.alert_type != a.get("type"):
                continue
            if geo.distance_m(float(a["lat"]), float(a["lon"]), tr.lat, tr.lon) > score.MATCH_M:
                continue
            run.upstream[tr.index] = {
                vid: None for vid in run.subs if vid in vehicles and tr.edge in sim.remaining_route(vid)[1:]
            }
    for idx, ups in run.upstream.items():
        edge = run.inj.by_index(idx).edge
        for vid, reached in ups.items():
            v = vehicles.get(vid)
            if reached is None and v is not None and v.edge == edge:
                ups[vid] = t


def _say(line: str) -> None:
    print(line, flush=True)


def default_say() -> Callable[[str], None]:
    return _say


def stderr_progress(total_s: float) -> Callable[[Run, float], None]:
    """A one-line progress bar on stderr (a line every 10 % when it is not a terminal)."""
    tty = sys.stderr.isatty()
    last = [-1]

    def show(run: Run, t: float) -> None:
        frac = min(1.0, t / total_s)
        pct = int(frac * 100)
        if not tty and pct // 10 == last[0]:
            return
        if tty and pct == last[0] and int(t) % 5:
            return
        last[0] = pct // 10 if not tty else pct
        bar = "#" * int(frac * 30)
        n = run.uplink.n
        line = (
            f"[{bar:<30}] {pct:3d}% sim {t:5.0f}/{total_s:.0f}s  vehicles {run.vehicles_seen}  "
            f"pings {n.pings_accepted}  alerts {len(run.tap.alerts)}  lag {run.clock.ts(t) - time.time():+.0f}s"
        )
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    return show
