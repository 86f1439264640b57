"""When a cell's condition is evaluated and published: news at once, busy cells paced, sparse ones never read.

A busy city touches thousands of cells a second; evaluating each touched cell on
every tick would cost more than the pings. So (:meth:`Pacing.due`, every tick):

* a cell not yet published is *news* when a device new to it came and some
  sector could have k devices (:meth:`CellSpeedWindow.could_reach`); the same
  devices again cannot publish it, so it waits for the rescan;
* a published cell is re-evaluated at most every :data:`REEVALUATE_S`, only
  when at least :data:`REEVALUATE_SHARE` of its window is new, and within
  :data:`TICK_BUDGET_S` per tick (an overloaded worker refreshes busy cells less
  often instead of falling behind on pings; news is never budgeted);
* every cell with k devices seen, every published cell and every cell with an
  open incident is rescanned once every :data:`RESCAN_S`, a share at each tick
  (:meth:`Pacing._rescan_due`); the others (fewer than k
  devices, unpublished, nothing open: most cells of a big area) can publish
  nothing and only expire, in a pass every :data:`SPARSE_RESCAN_S` — a tick's
  cost follows the busy cells, not the table (1M keys).

A re-evaluation that is not material builds no message (:mod:`pipeline.conditions`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from pipeline import conditions
from pipeline.cellstate import PartitionedState
from pipeline.detect import baseline
from pipeline.speed import CellSpeedWindow, SectorBucket, SectorStats

Record = tuple[bytes, bytes | None]  # (key, value); value None is a tombstone

# Every cell re-evaluated this often (issue: ≤ 30 s). Each costs ~0.1–0.3 ms (its expiry and a reading):
# at 10 s, rescans were a fifth of the worker's time at 20,000 pings/s; a busy cell's material
# changes are seen sooner anyway (REEVALUATE_S).
RESCAN_S = 25.0  # 5 s to spare under the 30 s for a tick that runs late
REEVALUATE_S = 1.0  # a published cell's changes are seen within this (+ a tick)
# ... once at least this share of its window is new since it was last evaluated. Fewer new
# samples cannot move a quantile by more than that share of ranks, so they rarely make a
# material change (15 % of speed); the rescan still evaluates every cell within RESCAN_S.
REEVALUATE_SHARE = 0.1
RESCAN_SLICES = 100  # slots of a rescan period: one per tick (RESCAN_S / 0.25 s)
SPARSE_RESCAN_S = 60.0  # expiry of cells that can publish nothing (memory, baseline learning)
# per tick (every 0.25 s, topologies/app.py), i.e. at most a tenth of the worker's time each:
TICK_BUDGET_S = 0.025  # re-evaluating published cells: the rest waits (news does not)
ADOPT_BUDGET_S = 0.025  # reading a (re)assigned partition's stored windows


class Pacing:
    """The conditions side of the engine: which cells to evaluate when, and what was published."""

    def __init__(
        self,
        cells: PartitionedState[CellSpeedWindow],
        baselines: PartitionedState[baseline.CellBaseline],
        active: PartitionedState[dict[str, dict[str, Any]]],
        min_devices: int,
    ) -> None:
        self.cells, self.baselines, self.active = cells, baselines, active
        self.min_devices = min_devices
        self.published: dict[str, dict[str, Any]] = {}
        # published cell → (its condition, what decides if a new reading is material): a re-evaluation
        # reads these instead of the message (conditions.settled); a stale one (not ``is`` the
        # published) is read again
        self.digests: dict[str, tuple[dict[str, Any], conditions.Digest]] = {}
        self.pending: set[str] = set()  # touched since the last tick
        self.urgent: set[str] = set()  # an incident opened or ended there: evaluated at the next tick
        self.evaluated_at: dict[str, float] = {}
        self.evaluated_n: dict[str, tuple[int, int]] = {}  # cell → (window.added, samples) when evaluated
        self.known: dict[str, int] = {}  # unpublished cell → devices it had seen when last evaluated
        # the rolling rescan (_rescan_due)
        self.slots: list[list[str]] = []  # this period's cells to rescan, by slot
        self.slot_at: int | None = None  # the last slot rescanned (a count of RESCAN_S/RESCAN_SLICES since epoch)
        self.sparse_at = 0.0
        # stored windows of (re)assigned partitions still to read, and cells that may have a
        # condition on the compacted topic from before (published is in memory only)
        self.adopting: list[tuple[int, Iterator[tuple[str, CellSpeedWindow]]]] = []
        self.maybe_published: set[str] = set()

    def due(self, now: float, out: list[Record]) -> None:
        """The tick: evaluate the cells that are due (see the module docstring); conditions into ``out``."""
        if self.adopting:
            self.adopt_windows(now)
        due, busy = self._triage(self.pending, now)
        due |= self.urgent
        self.urgent = set()
        evaluated, windows = self.evaluated_at, self.cells.values
        for cell in self._rescan_due(now):
            w = windows.get(cell)
            if cell in due or w is None or now - evaluated.get(cell, 0.0) >= RESCAN_S / 2:
                due.discard(cell)
                self._evaluate(cell, now, out, True)
            elif self._expire(cell, w, now):
                # a busy cell, read since the last rescan: only its expiry, and a reading if buckets closed
                self._evaluate(cell, now, out, False)
        for cell in due:
            self._evaluate(cell, now, out, False)
        deadline = time.perf_counter() + TICK_BUDGET_S
        for i, cell in enumerate(busy):
            self._evaluate(cell, now, out, False)
            if i % 16 == 15 and time.perf_counter() > deadline:
                self.pending.update(busy[i + 1 :])  # overloaded: the rest at the next tick
                break

    def _rescan_due(self, now: float) -> list[str]:
        """The rolling rescan's share of this tick: the cells whose slot came since the last tick.

        A period of :data:`RESCAN_S` has :data:`RESCAN_SLICES` slots; a cell's slot is
        fixed (by its hash), so it is rescanned every RESCAN_S, and each tick rescans
        the slots whose time came — all at once stopped the loop for ~0.5 s. The cells
        are listed anew each period (one that came since waits for the next); a tick
        after a whole period without one (a stopped loop, a test's clock) rescans
        everything.
        """
        slot = int(now // (RESCAN_S / RESCAN_SLICES))
        if self.slot_at is None or slot - self.slot_at >= RESCAN_SLICES:
            self.slot_at, self.slots = slot, []
            return list(self._rescan_set(now))
        cells: list[str] = []
        for s in range(self.slot_at + 1, slot + 1):
            i = s % RESCAN_SLICES
            if i == 0 or not self.slots:
                self.slots = [[] for _ in range(RESCAN_SLICES)]
                for cell in self._rescan_set(now):
                    self.slots[hash(cell) % RESCAN_SLICES].append(cell)
            cells += self.slots[i]
        self.slot_at = slot
        return cells

    def _rescan_set(self, now: float) -> set[str]:
        return self.published.keys() | self.active.values.keys() | self._rescan_cells(now)

    def forget(self, kept: Iterable[int]) -> None:
        """After a rebalance (the states already forgot the lost partitions' keys)."""
        keep = set(kept)
        cells = self.cells.values
        self.adopting = [(p, rows) for p, rows in self.adopting if p in keep]
        self.maybe_published &= cells.keys()
        self.known = {c: n for c, n in self.known.items() if c in cells}
        self.published = {c: v for c, v in self.published.items() if c in cells}
        self.digests = {c: d for c, d in self.digests.items() if c in self.published}

    def adopt_windows(self, now: float) -> None:
        """Read stored windows of (re)assigned partitions for :data:`ADOPT_BUDGET_S` (see Engine.adopt)."""
        deadline = time.perf_counter() + ADOPT_BUDGET_S
        while self.adopting:
            _, rows = self.adopting[0]
            for n, (cell, window) in enumerate(rows):
                if len(window.seen) >= self.min_devices:
                    self.maybe_published.add(cell)  # evaluated at this tick: republished or tombstoned
                    self.pending.add(cell)
                self._expire(cell, window, now)  # an emptied window is deleted at the next write-back
                if n % 64 == 63 and time.perf_counter() > deadline:
                    return
            self.adopting.pop(0)

    def _triage(self, due: set[str], now: float) -> tuple[set[str], list[str]]:
        """Touched cells → (news, evaluated at once; published cells due, within the tick's budget).

        A busy city touches thousands of cells a second. A cell not yet published
        is news when a device new to it came (it may now reach k in a sector);
        the same devices again cannot publish it, so it waits for the rescan. A
        published cell is re-evaluated at most every REEVALUATE_S, and only when
        enough is new to matter; the rest stays pending.
        """
        published, evaluated, counts, known = self.published, self.evaluated_at, self.evaluated_n, self.known
        windows = self.cells.values
        news: set[str] = set()
        later: set[str] = set()
        busy: list[str] = []
        share = REEVALUATE_SHARE
        for c in due:  # (thousands a tick: the window is looked up only where it is read)
            if c not in published:
                w = windows.get(c)
                if w is None or known.get(c) != len(w.seen):
                    news.add(c)
                continue
            if now - evaluated.get(c, 0.0) < REEVALUATE_S:
                later.add(c)
                continue
            n = counts.get(c)
            if n is not None and (w := windows.get(c)) is not None and 0 <= w.added - n[0] < share * n[1]:
                continue  # too little new to matter: left to the rescan
            busy.append(c)
        self.pending = later
        return news, busy

    def _evaluate(self, cell: str, now: float, out: list[Record], rescan: bool) -> None:
        self.evaluated_at[cell] = now
        w = self.cells.values.get(cell)
        if self._condition(cell, w, now, out, rescan):  # published
            self.known.pop(cell, None)
            if w is not None:
                n = self.evaluated_n.get(cell)
                # the engine puts the cell in ``pending`` again only once enough is new for _triage
                # to pick it: most touched cells are published and busy, and triaging them at every
                # tick cost a tenth of the worker at 30,000 pings/s
                w.wake_at = n[0] + math.ceil(REEVALUATE_SHARE * n[1]) if n is not None else 0
        elif w is not None:
            w.wake_at = 0  # any new device may publish it
            self.known[cell] = len(w.seen)  # the devices that did not make it publish
        else:
            self.known.pop(cell, None)

    def _rescan_cells(self, now: float) -> set[str]:
        """The cells a rescan evaluates: those with k devices seen; sparse ones only expire."""
        k, dense = self.min_devices, set()
        sparse = now - self.sparse_at >= SPARSE_RESCAN_S
        if sparse:
            self.sparse_at = now
        for cell, window in self.cells.values.items():  # no copy: expiring only marks (1M cells: 50 ms)
            if len(window.seen) >= k:
                dense.add(cell)
            elif sparse:
                self._expire(cell, window, now)
        if sparse:  # a baseline waits in its table while its cell is quiet (clean ones only)
            for cell in [c for c in self.known if c not in self.cells.values]:
                del self.known[cell]
            for cell in [c for c in self.baselines.values if c not in self.cells.values]:
                self.baselines.evict(cell)
        return dense

    def _expire(self, cell: str, window: CellSpeedWindow, now: float) -> bool:
        """Drop what left the window; True if buckets closed (what drivers are told may change)."""
        known = len(window.seen)
        closed = window.expire(now)
        if closed or len(window.seen) != known:
            self.cells.mark(cell)  # only what changed: a rescan must not rewrite every cell's changelog
        if closed:
            self._learn(cell, closed)
        return bool(closed)

    def _condition(
        self, cell: str, window: CellSpeedWindow | None, now: float, out: list[Record], expire: bool
    ) -> bool:
        """Evaluate ``cell`` (its ``window``): a condition, a tombstone or nothing into ``out``; True if published now.

        Most evaluations of a busy city find nothing material: that path reads the
        window's sectors once and builds nothing (jam factors, rounding, the message
        and its centre are left to a material change).
        """
        open_ = self.active.values.get(cell)
        published = self.published
        prev = published.get(cell)
        if (
            not open_
            and prev is None
            and cell not in self.maybe_published
            and (window is None or not window.could_reach(self.min_devices))
        ):
            # no sector can have k devices (a cell filling up one device at a time is evaluated
            # at each new one) and nothing open: nothing to publish, nothing to read
            self.evaluated_at.pop(cell, None)
            self.evaluated_n.pop(cell, None)
            if window is None:
                self.baselines.evict(cell)
            return False
        if window is not None and expire:  # O(devices seen): on rescans only
            self._expire(cell, window, now)
        if open_:
            lapsed = [i for i, a in open_.items() if a["expires_at"] is not None and a["expires_at"] <= now]
            for i in lapsed:
                del open_[i]
            if lapsed:
                self.active.mark(cell)
            shut = any(a["type"] == "closure" for a in open_.values())  # a closure: level 5
            incidents = sorted(open_)
        else:
            shut, incidents = False, []
        k = self.min_devices
        if window is not None:
            stats = window.stats(now)
            samples = 0
            for st in stats.values():
                samples += st.samples
            self.evaluated_n[cell] = (window.added, samples)
        else:
            stats = {}
        b = self.baselines.values.get(cell)
        free_flow = None if b is None else self._free_flow(b, stats, now)
        if prev is not None:
            seen = self.digests.get(cell)
            if seen is None or seen[0] is not prev:  # published before this Pacing kept digests: read it now
                seen = self.digests[cell] = (prev, conditions.digest(prev))
            if conditions.settled(seen[1], stats, k, free_flow, shut, incidents, now):
                return True  # not material: nothing to build
        rs = conditions.readings(stats, min_devices=k, free_flow=free_flow, closed=shut)
        cond = conditions.build_condition(
            cell,
            stats,
            now=now,
            version=conditions.next_version(prev["version"] if prev else 0, now),
            min_devices=k,
            incidents=incidents,
            closed=shut,
            sector_readings=rs,
        )
        maybe = cell in self.maybe_published
        if maybe:
            self.maybe_published.discard(cell)
        if cond is None:
            if prev is not None or maybe:
                out.append((cell.encode(), None))  # a tombstone: gone from the compacted topic
                published.pop(cell, None)
                self.digests.pop(cell, None)
            self.evaluated_at.pop(cell, None)
            self.evaluated_n.pop(cell, None)
            if window is None or window.is_empty():
                self.baselines.evict(cell)  # quiet cell: its baseline waits in the table
            return False
        if conditions.is_material(prev, cond, now):
            out.append((cell.encode(), orjson.dumps(cond)))
            published[cell] = cond
            self.digests[cell] = (cond, conditions.digest(cond))
            return True
        return prev is not None

    def _free_flow(self, b: baseline.CellBaseline, stats: dict[int, SectorStats], now: float) -> dict[int, float]:
        """baseline.free_flow_by_sector, for only the sectors :func:`conditions.readings` reads (k devices).

        Each is a quantile of a histogram: the cell's other sectors (the opposite direction,
        a side street) were read at every evaluation and never used.
        """
        learned, k = b.sectors, self.min_devices
        return {sec: baseline.free_flow(b, sec, now) for sec, st in stats.items() if st.devices >= k and sec in learned}

    def _learn(self, cell: str, closed: list[tuple[int, dict[int, SectorBucket]]]) -> None:
        """Fold speed-window buckets that just closed into the cell's free-flow baseline."""
        part = self.cells.partition_of.get(cell)
        if part is None:
            return
        b = self.baselines.values.get(cell) or self.baselines.get(cell, part)
        for start, sectors in closed:
            for sec, bucket in sectors.items():
                b = baseline.fold(b, sec, bucket.hist, float(start))
        if b is not None:
            self.baselines.put(cell, b, part)
