"""Every stream agent's logic over partition-bound state — the worker without Kafka.

``topologies/app.py`` feeds an :class:`Engine` decoded records (with their
partition) and timer ticks, and ships what it returns; tests drive it with
plain dicts as tables and an injected ``now``.

State, one faust table each (key → bytes), all keyed inside the partition of
the res-7 key that routed the record (pings and reports share keys, so one
partition number holds a spot's pings *and* its reports):

=========  ======================  ===========================================
table      key                     write-back
=========  ======================  ===========================================
speed      res-9 cell              every record: windows + per-device seq
                                   dedupe, so a replay counts each ping once
baseline   res-9 cell              every 10 s per partition (relearnable)
devices    ``<res-7 key>|<device>``  every 2 s, only stopped or stalled devices
areas      res-9 cell (crash)      every record (rare)
books      res-7 key (reports)     every record (rare)
active     res-9 cell              every record: open incidents per cell
=========  ======================  ===========================================

A device's motion state is per partition key: when it crosses into another
res-7 cell its pings are routed elsewhere and it is seeded afresh there (see
:mod:`pipeline.detect.motion` for what that costs and why it is acceptable).
A moving device's state is not written at all: losing it in a crash only means
its next ping seeds again, and writing it would cost a changelog record per ping.

Moving devices with nothing open (most of them) are not Python objects at all:
they live as C structs in :attr:`Engine.movers` (:mod:`pipeline._movers`), whose
``glide`` is :func:`pipeline.detect.motion.glide` for a record's usual pings
without touching a Python object per device (the worker is memory-bound: the
same glide in C on the Python trackers gained nothing). A device is in exactly
one of ``devices.values`` and ``movers``; any ping the C path refuses takes it
out as a ``StallState`` and steps it in Python, and after a step a device moving
with nothing open goes back. Such a device is never persisted, so nothing about
the table changes (a stop's stored copy still gets its tombstone: the step that
ends the stop marks the key, and the flush finds it absent from ``values``).
``Engine(native=False)`` keeps every device in Python (the reference the native
engine is held equal to, tests/unit/test_movers.py).

Conditions (:meth:`Engine.tick`) come from the speed windows, the learned free
flow of the cell (hour of week of ``now``) and the open incidents of the cell;
a closure sets level 5. Alerts come from every detector as they happen.
Incidents published in ``active`` are dropped at their ``expires_at`` even if
the detector that opened them was lost (a crashed worker's moving-device state).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import h3
import orjson

from pipeline import _movers, geo
from pipeline._records import PingBatch
from pipeline.cellstate import DictTable, PartitionedState, PartitionTable
from pipeline.detect import baseline, crash, incidents, motion, stall
from pipeline.detect.events import IncidentEvent, to_alert
from pipeline.detect.spots import Spots
from pipeline.pacing import Pacing
from pipeline.pings import Ping
from pipeline.speed import CellSpeedWindow, add_pings

Table = PartitionTable
Record = tuple[bytes, bytes | None]  # (key, value); value None is a tombstone

SWEEP_S = 5.0  # detectors' timers: quiet devices, crash context, report lifetimes
DEVICE_EXPIRE_S = 60.0  # silent devices' state dropped this often: a pass over every tracker
REPORT_NEAR_M = incidents.MERGE_M
_by_ts = itemgetter("ts")
_NOBODY: dict[str, Any] = {}  # no cell watched (never written)
_movers.bind(
    motion.MotionTracker,
    stall.StallState,
    motion.STILL_MPS,
    motion.GAP_S,
    motion.MAX_BRAKE_DT_S,
    motion.HARD_BRAKE_MPS2,
    motion.TTL_S,
)


class RecordProblem(ValueError):
    """A report/vote record that cannot be applied (goes to the dead letters)."""


@dataclass
class Tables:
    speed: Table
    baseline: Table
    devices: Table
    areas: Table
    books: Table
    active: Table

    @classmethod
    def in_memory(cls) -> Tables:
        return cls(DictTable(), DictTable(), DictTable(), DictTable(), DictTable(), DictTable())


@dataclass
class Output:
    conditions: list[Record] = field(default_factory=list)
    alerts: list[Record] = field(default_factory=list)


def _enc_active(v: dict[str, dict[str, Any]]) -> bytes:
    return orjson.dumps(v)


def _dec_active(raw: bytes) -> dict[str, dict[str, Any]]:
    doc: dict[str, dict[str, Any]] = orjson.loads(raw)
    return doc


def _device_worth_storing(s: stall.StallState) -> bool:
    return s.motion.still_since is not None or s.stall is not None


class Engine:
    def __init__(
        self, tables: Tables, *, min_devices: int = 3, cell_res: int = 9, key_res: int = 7, native: bool = True
    ) -> None:
        self.min_devices = min_devices
        self.cell_res, self.key_res = cell_res, key_res
        self.cells: PartitionedState[CellSpeedWindow] = PartitionedState(
            tables.speed, CellSpeedWindow.to_bytes, CellSpeedWindow.from_bytes, CellSpeedWindow.is_empty
        )
        self.baselines: PartitionedState[baseline.CellBaseline] = PartitionedState(
            tables.baseline,
            baseline.CellBaseline.to_bytes,
            baseline.CellBaseline.from_bytes,
            baseline.CellBaseline.is_empty,
            every_s=10.0,
        )
        self.devices: PartitionedState[stall.StallState] = PartitionedState(
            tables.devices,
            stall.StallState.to_bytes,
            stall.StallState.from_bytes,
            lambda _: False,
            every_s=2.0,
            persist=_device_worth_storing,
        )
        self.areas: PartitionedState[crash.CrashArea] = PartitionedState(
            tables.areas, crash.CrashArea.to_bytes, crash.CrashArea.from_bytes, lambda _: False
        )
        self.books: PartitionedState[incidents.Book] = PartitionedState(
            tables.books, incidents.Book.to_bytes, incidents.Book.from_bytes, incidents.Book.is_empty
        )
        self.active: PartitionedState[dict[str, dict[str, Any]]] = PartitionedState(
            tables.active, _enc_active, _dec_active, lambda v: not v
        )
        self.pacing = Pacing(self.cells, self.baselines, self.active, min_devices)
        self.swept_at = 0.0
        self.stalled: set[str] = set()  # device keys with an open stall: the sweep's per-tick work
        self.sits: dict[str, str] = {}  # incident id → the cell whose ``active`` lists it (moves leave no ghost)
        self.devices_expired_at = 0.0
        self.spots = Spots()  # stopped devices and who passes them: in memory, rebuilt from live pings
        self.parents: dict[str, str] = {}  # res-9 cell → its key (H3 parent): ~0.5 µs a ping saved
        self.dkeys: dict[str, tuple[str, str]] = {}  # device → (its last key, its devices-table key)
        # moving devices with nothing open, as C structs (see the module doc); None: all in Python
        self.movers: _movers.Store | None = _movers.Store() if native else None
        self.pings = 0
        self.duplicates = 0
        self.reports = 0  # report and vote records seen (bad ones included)

    # -- records ------------------------------------------------------------
    def on_pings(self, batch: Sequence[Ping] | PingBatch, partition: int, now: float) -> Output:
        """One decoded ping record of ``partition``: windows, baseline, per-device detectors.

        Each ping carries its ``cell_res`` ``"cell"``, as :func:`pipeline.pings.decode_record` gives it;
        ``batch`` is a list of ping dicts or the :class:`PingBatch` of :func:`pipeline.pings.decode_batch`
        (C structs that the windows and the movers' glide read as they are; ``ordered[i]`` below makes
        a dict only for the few pings the loop handles in Python).
        """
        out = Output()
        cells, devices = self.cells, self.devices
        windows, trackers = cells.values, devices.values
        key_res = self.key_res
        to_parent = h3.cell_to_parent
        step, needs_around = stall.step_with_facts, stall.needs_around
        parents, dkeys = self.parents, self.dkeys
        glide = motion.glide
        spots = self.spots
        watched, standing = spots.by_cell, spots.by_device
        touched_cells: set[str] = set()
        wake = self.pacing.pending  # cells the conditions side wants to hear of (window.wake_at)
        touched_devices: set[str] = set()
        movers = self.movers
        ordered: list[Ping] | PingBatch
        if isinstance(batch, PingBatch):
            ordered = batch.sorted_by_ts()  # stable, as sorted(): the same order
        else:
            ordered = sorted(batch, key=_by_ts) if len(batch) > 1 else list(batch)
        # the speed windows first, all pings at once in C (speed.add_pings): they and the
        # detectors below share no state, except that a crash fact reads its cell's traffic,
        # which then already counts the rest of this record (seconds of one area)
        duplicates = add_pings(ordered, windows, self._window_of, partition, now, touched_cells, wake)
        i, n = 0, len(ordered)
        see_in_c = spots.native  # spots.see is _spots.see: the glide calls it itself, no dict or call a ping
        seen = False  # ordered[i] was seen by the glide (then refused): not to be seen twice
        while i < n:
            if movers is not None:
                # the usual pings of stored moving devices, in C, the watched cells' ones seen there
                # first; it stops at the first one it leaves to the loop below (a stop, a brake, a
                # seed, a new cell...): ~i if it saw that one
                i = movers.glide(ordered, i, now, parents, watched, standing, see_in_c)
                if i < 0:
                    i, seen = ~i, True
                elif i == n:
                    break
            p = ordered[i]
            i += 1
            c9 = p["cell"]
            dev = p["device_id"]
            if seen:  # and refused by the glide below's rules: on to the slow path
                seen = False
            elif c9 in watched:  # someone stands near: does this one go past them?
                spots.see(c9, dev, p["ts"], p["lat"], p["lon"], p["speed_mps"], p["heading_deg"])
                if movers is not None and movers.glide([p], 0, now, parents, _NOBODY, standing):
                    continue  # seen: now it glides on in C like the others
            k7 = parents.get(c9)
            if k7 is None:
                # interned: one key object for all its cells, so the movers' store matches it by identity
                k7 = parents[c9] = sys.intern(to_parent(c9, key_res))
            hit = dkeys.get(dev)
            if hit is not None and hit[0] == k7:
                dkey = hit[1]  # one object per device and key: the dicts find it by identity
            else:
                dkey = k7 + "|" + dev
                dkeys[dev] = (k7, dkey)
            st = trackers.get(dkey)
            if st is None:
                st = (movers.take(dev, k7) if movers is not None else None) or devices.get(dkey, partition)
            if st is not None and st.stall is None and glide(st.motion, p, now):
                # moving on, nothing open, no fact (most pings): what step() would have done
                if dev in standing:
                    spots.lift(dev)
                touched_devices.add(dkey)
                if movers is not None and movers.put(dev, k7, dkey, st, partition):
                    trackers.pop(dkey, None)
                continue
            # needs_around only for a device standing with nothing open (few): a call saved per moving one
            near = st is not None and st.stall is None and st.motion.still_since is not None and needs_around(st, p)
            st, events, facts = step(st, p, now, spots.around(dev) if near else None)
            if movers is not None and st.stall is None and st.motion.still_since is None:
                if movers.put(dev, k7, dkey, st, partition):  # moving, nothing open: back to C
                    trackers.pop(dkey, None)
                else:
                    trackers[dkey] = st  # a field C does not hold exactly (an int past 2**53)
            else:
                trackers[dkey] = st
            if st.stall is not None:
                self.stalled.add(dkey)
            m = st.motion
            if m.still_since is not None:
                spots.place(dev, m.still_lat, m.still_lon, m.heading, m.still_since, now)
            elif dev in standing:
                spots.lift(dev)
            touched_devices.add(dkey)
            for ev in events:
                self._emit(ev, k7, partition, out)
                self._corroborate(k7, ev, partition, now, out)
            for fact in facts:
                if not isinstance(fact, motion.HardBrake):  # a brake alone is not yet a candidate
                    self._crash_fact(fact, k7, partition, now, out)
        cells.mark_known(touched_cells, partition)
        devices.touch(touched_devices, partition)
        self.pings += len(batch) - duplicates
        self.duplicates += duplicates
        return out

    def _window_of(self, cell: str, partition: int) -> CellSpeedWindow:
        # every window add_pings puts in ``values`` comes from here: its partition is noted now, so the
        # per-record mark (cells.mark_known) need not look each touched cell up in partition_of
        got = self.cells.get(cell, partition)
        if got is None:
            got = CellSpeedWindow()
            self.cells.partition_of[cell] = partition
        return got

    def on_report(self, key7: str, rec: Any, partition: int, now: float) -> Output:
        """One record of ``traverz.reports.v1`` (``kind`` report or vote)."""
        out = Output()
        self.reports += 1
        kind = rec.get("kind") if isinstance(rec, dict) else None
        book = self.books.get(key7, partition)
        try:
            if kind == "report":
                _check_report(rec)
                book, events = incidents.report(book, rec, now)
            elif kind == "vote":
                if not all(isinstance(rec.get(k), str) for k in ("report_id", "device_id", "vote")):
                    raise RecordProblem("vote: report_id, device_id and vote must be strings")
                if not isinstance(rec.get("ts"), int | float):
                    raise RecordProblem("vote: ts must be a number")
                book, events = incidents.vote(book, rec, now)
            else:
                raise RecordProblem("kind: must be report or vote")
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordProblem(str(exc) or type(exc).__name__) from exc
        self.books.put(key7, book, partition)
        for ev in events:
            self._emit(ev, key7, partition, out)
        return out

    def flush(self, partition: int, now: float) -> int:
        """Write ``partition``'s changed state to its tables; the caller is inside an event of it.

        The agent calls this before acknowledging that partition's records, so
        the offsets faust commits never run ahead of the state in the changelog.
        """
        return sum(
            state.flush(partition, now)
            for state in (self.cells, self.baselines, self.devices, self.areas, self.books, self.active)
        )

    def adopt(self, partition: int) -> None:
        """``partition`` was (re)assigned with its restored tables: take over what they hold.

        What only the tables hold is otherwise read when a record touches it
        again, so after a restart or a takeover an incident would never lapse
        nor a quiet cell be tombstoned. Incidents, crash areas, report books
        and stopped devices are few: loaded now. Speed windows can be millions:
        read a slice per tick (:data:`pipeline.pacing.ADOPT_BUDGET_S`) while records flow.
        """
        held = self.movers.keys() if self.movers is not None and len(self.movers) else {}
        for key, st in self.devices.adopt(partition):
            if key in held:  # the table's copy is a stop it has left (its tombstone is pending)
                del self.devices.values[key]
            elif st.stall is not None:
                self.stalled.add(key)
        for state in (self.areas, self.books):
            for _ in state.adopt(partition):
                pass
        for cell, listed in self.active.adopt(partition):
            self.pacing.urgent.add(cell)
            self.sits.update(dict.fromkeys(listed, cell))
        self.pacing.adopting.append((partition, self.cells.adopt(partition)))

    # -- helpers --------------------------------------------------------------
    def device_keys(self) -> dict[str, int]:
        """Every tracked device's table key → its partition, in Python or in :attr:`movers`."""
        held = {key: self.devices.partition_of.get(key, 0) for key in self.devices.values}
        if self.movers is not None:
            held.update(self.movers.keys())
        return held

    def tracked_devices(self) -> int:
        """How many device states are held in memory (metrics)."""
        return len(self.devices.values) + (len(self.movers) if self.movers is not None else 0)

    def traffic(self, cell: str, sector: int, now: float) -> float | None:
        """Median speed of a cell and sector over the window; None below k devices."""
        w = self.cells.values.get(cell)
        if w is None:
            return None
        s = w.stats(now).get(sector)
        return s.median_mps if s is not None and s.devices >= self.min_devices else None

    def free_flow(self, cell: str, sector: int, now: float) -> float:
        return baseline.free_flow(self.baselines.values.get(cell), sector, now)

    def _emit(self, ev: IncidentEvent, key7: str, partition: int, out: Output) -> None:
        alert = to_alert(ev)
        cell, iid = alert["cell"], alert["id"]
        out.alerts.append((cell.encode(), orjson.dumps(alert)))
        was = self.sits.pop(iid, None)
        if was is not None and was != cell:
            # its position moved into another cell (a report incident's mean does): out of the old
            # cell's list, or a closure there would stay level 5 with nothing to end it
            left = self.active.get(was, partition)
            if left is not None and left.pop(iid, None) is not None:
                self.active.put(was, left, partition)
                self.pacing.urgent.add(was)
        if geo.parent(cell, self.key_res) != key7:
            # the incident's cell belongs to another partition, whose worker publishes its
            # condition; two writers of one compacted key would contradict each other
            return
        cur = self.active.get(cell, partition) or {}
        if ev.state == "cleared":
            cur.pop(iid, None)
        else:
            cur[iid] = {"type": alert["type"], "expires_at": alert["expires_at"]}
            self.sits[iid] = cell
        self.active.put(cell, cur, partition)
        self.pacing.urgent.add(cell)  # an incident opened or ended: drivers hear of it at the next tick

    def _crash_reports(self, key7: str, lat: float, lon: float, partition: int) -> int:
        book = self.books.get(key7, partition)
        if book is None:
            return 0
        return sum(
            inc.reports
            for inc in book.incidents.values()
            if inc.type == "crash"
            and inc.ended_at is None
            and geo.distance_m(inc.lat, inc.lon, lat, lon) <= REPORT_NEAR_M
        )

    def _crash_context(
        self, area: crash.CrashArea, fact_cell: str, fact_sector: int, now: float
    ) -> tuple[float | None, float]:
        cell, sec = crash.watch(area) or (fact_cell, fact_sector)
        return self.traffic(cell, sec, now), self.free_flow(cell, sec, now)

    def _crash_fact(self, fact: motion.Fact, key7: str, partition: int, now: float, out: Output) -> None:
        home = geo.cell(fact.lat, fact.lon, self.cell_res)
        sec = geo.sector(fact.heading_deg) if isinstance(fact, motion.Stopped) else 0
        for key in crash.area_keys(fact.lat, fact.lon, key7):
            area = self.areas.get(key, partition)
            if area is None and isinstance(fact, motion.Moving):
                continue  # leaving an area that never saw the vehicle stop changes nothing
            traffic, ff = self._crash_context(area or crash.CrashArea(key), home, sec, now)
            reports = self._crash_reports(key7, fact.lat, fact.lon, partition)
            # the fact's own device too: step() makes it one of the area's vehicles, and without its
            # spot (placed before its facts come) a candidate waited for the next sweep to be probed
            standing = self.spots.standing([*area.vehicles, fact.device] if area is not None else [fact.device])
            candidate = area.crash.device if area is not None and area.crash is not None else fact.device
            area, events = crash.step(
                area,
                fact,
                now,
                cell=key,
                traffic_mps=traffic,
                free_flow_mps=ff,
                reports=reports,
                standing=standing,
                queue_tail=self.spots.queue_tail(candidate),
            )
            self.areas.put(key, area, partition)
            for ev in events:
                self._emit(ev, key7, partition, out)
                self._corroborate(key7, ev, partition, now, out)

    def _corroborate(self, key7: str, ev: IncidentEvent, partition: int, now: float, out: Output) -> None:
        """A probe detection near a reported incident of the same type raises its confidence (and vice versa)."""
        book = self.books.get(key7, partition)
        if book is None:
            return
        inc = ev.incident
        match = incidents.find(book, inc.type, inc.lat, inc.lon, inc.heading_deg)
        if match is None:
            return
        probes = 0 if ev.state == "cleared" else 1
        events = incidents.set_probes(book, match.id, probes, now)
        if events:
            self.books.put(key7, book, partition)
            for e in events:
                self._emit(e, key7, partition, out)

    # -- timer ------------------------------------------------------------------
    def tick(self, now: float) -> Output:
        """Timer: detector sweeps every :data:`SWEEP_S`, then conditions of the cells that are due."""
        out = Output()
        if now - self.swept_at >= SWEEP_S:
            self.swept_at = now
            self._sweep(now, out)
        self.pacing.due(now, out.conditions)
        return out

    def _sweep(self, now: float, out: Output) -> None:
        self.spots.expire(now, stall.QUIET_S)
        devices = self.devices
        for key in list(self.stalled):  # only open stalls have a timer (cleared when gone quiet)
            st = devices.values.get(key)
            if st is not None:
                part = devices.partition_of.get(key, 0)
                key7 = key.split("|", 1)[0]
                for ev in stall.tick(st, now):
                    self._emit(ev, key7, part, out)
                    self._corroborate(key7, ev, part, now, out)
                    devices.mark(key)
            if st is None or st.stall is None:
                self.stalled.discard(key)
        if now - self.devices_expired_at >= DEVICE_EXPIRE_S:  # every tracker: not every sweep
            self.devices_expired_at = now
            for key, st in devices.items():
                if stall.expire(st, now):
                    devices.drop(key)
            if self.movers is not None:
                # stall.expire's rule. No mark needed: a key was marked when it entered the store,
                # so a stop's stored copy has its tombstone due already (devices.drop adds nothing)
                self.movers.expire(now)
            self._prune_sits()
        areas = self.areas
        for key, area in areas.items():
            part = areas.partition_of.get(key, 0)
            sec = geo.sector(area.crash.heading) if area.crash is not None else 0
            traffic, ff = self._crash_context(area, key, sec, now)
            key7 = geo.parent(key, self.key_res)
            reports = self._crash_reports(key7, area.crash.lat, area.crash.lon, part) if area.crash else 0
            standing = self.spots.standing(area.vehicles) if area.crash else None
            tail = self.spots.queue_tail(area.crash.device) if area.crash else False
            events = crash.tick(
                area, now, traffic_mps=traffic, free_flow_mps=ff, reports=reports, standing=standing, queue_tail=tail
            )
            for ev in events:
                self._emit(ev, key7, part, out)
                self._corroborate(key7, ev, part, now, out)
            if events or area.vehicles:
                areas.mark(key)
            if crash.expire(area, now):
                areas.drop(key)
        books = self.books
        for key, book in books.items():
            part = books.partition_of.get(key, 0)
            events = incidents.expire(book, now)
            for inc in book.incidents.values():
                if inc.ended_at is None and inc.type in incidents.RECOVERABLE:
                    traffic = self.traffic(inc.cell, inc.sector, now)
                    ratio = None if traffic is None else traffic / self.free_flow(inc.cell, inc.sector, now)
                    recovered = incidents.on_speed(inc, ratio, now)
                    if recovered is not None:
                        events.append(recovered)
            for ev in events:
                self._emit(ev, key, part, out)
            books.mark(key)
            if book.is_empty():
                books.drop(key)
        if len(self.parents) > 500_000:
            self.parents.clear()  # a cache: bounded, refilled as pings come
        if len(self.dkeys) > 500_000:
            self.dkeys.clear()

    def forget_partitions(self, keep: Iterable[int]) -> None:
        """After a rebalance: drop what belongs to partitions this worker lost."""
        kept = set(keep)
        for state in (self.cells, self.baselines, self.devices, self.areas, self.books, self.active):
            state.forget_partitions(kept)
        if self.movers is not None:
            self.movers.forget(kept)
        self.spots.clear()
        self.stalled &= self.devices.values.keys()
        self._prune_sits()
        self.pacing.forget(kept)

    def _prune_sits(self) -> None:
        """Forget where incidents sit once ``active`` no longer lists them (lapsed, or another worker's)."""
        listed = self.active.values
        self.sits = {i: c for i, c in self.sits.items() if i in listed.get(c, ())}


def _check_report(rec: dict[str, Any]) -> None:
    for k in ("id", "type", "device_id"):
        if not isinstance(rec.get(k), str):
            raise RecordProblem(f"report: {k} must be a string")
    for k in ("lat", "lon", "heading_deg", "ts"):
        v = rec.get(k)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise RecordProblem(f"report: {k} must be a number")
    if not (-90 <= rec["lat"] <= 90 and -180 <= rec["lon"] <= 180):
        raise RecordProblem("report: position out of range")
