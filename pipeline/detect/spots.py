"""What the traffic does around a vehicle standing still: does it pass it, or queue behind it?

From its own pings, a car waiting at a red light, one queued behind a left-turner and one
stalled in its lane look the same. What differs is around it (measured on SUMO scenarios
with ``traverz simulate --offline``: every stall false alarm stood in a queue, every crash
false alarm was a hard stop at a red light with the queue behind it):

* **passers**: other devices in its direction (± :data:`SAME_DIRECTION_DEG`) seen first
  *behind* it (up to :data:`BEHIND_M`) and then *ahead* of it (:data:`AHEAD_M` along its
  heading, ≤ :data:`ASIDE_M` to the side, moving ≥ :data:`PASS_MPS`), after it stopped. The
  traffic goes round it: its lane is blocked, the road is not. At a red light nothing in its
  direction goes past; the cars queued ahead of it that drive off never were behind it.
* **queued**: another device standing just ahead of it (:data:`QUEUE_AHEAD_M` along, ≤
  :data:`QUEUE_ASIDE_M` aside), in any direction but the oncoming one: the car ahead often
  waits to turn, across its lane. It waits behind someone; it is not the obstacle. (With few
  phones on the road the car ahead is often not a device: then the other rules speak.)
* **usual**: at least :data:`USUAL_MIN` other devices started a stop within
  :data:`USUAL_M` of this one, in its direction *or across it* (within :data:`USUAL_DEG`:
  anything but the oncoming direction), in the :data:`HISTORY_S` *before* it stopped: a
  stop line, a junction, a merge, a jam's stop-and-go. A car that breaks down mid-block
  stops where nobody stopped before; the cars that then stop behind it come after. Stops
  across its direction are what makes a junction: a car first in line waiting ≥ 90 s to
  turn left across an oncoming stream (or to get out of a side road) has the through
  traffic of its own road passing it in the next lane at 6–15 m/s, exactly like a stalled
  car, and nobody ahead of it; what tells it apart is where it stands, where the cross
  road's cars stopped too, before it or while it waits (measured offline, ``congestion``
  seeds 1–40: all 15 stall false alarms waited at junctions, 9 of them in Rudower
  Chaussee's left-turn lane; the oncoming direction does not count, so a jam on the other
  side of the road does not hide a breakdown on this one, and its own direction counts
  only before it, so the queue behind a stall does not either). It is decided when the
  stop starts, looked at again from the running centroid as that settles (the first still
  fix can be 10–15 m off) and, once it has passers, for the cross road's stops since;
  never un-decided. Its own earlier stops at the same place (a stop restarted by GPS jitter
  or a coverage gap) count as its start: the queue that formed behind a stalled car
  meanwhile is not "before" it. The cost: a stall or crash right at a stop line or in a
  junction is left to drivers' reports.

Offsets are measured in a local flat frame around the stop (exact enough within 100 m).
Lanes are 3–3.5 m apart and fixes are off by 5–15 m, so "aside" cannot tell lanes apart;
it only keeps the next street out.

Passers are counted in the order pings reach the worker: a stop must be known before the
pings of the cars that go round it. A stalled phone whose whole stop arrives later as one
backlog (after a coverage gap) is matched with nothing seen before; it waits for new passers.

This is in-memory and per worker, rebuilt from the live pings: a restart delays a detection
by the time the passers take to pass again, nothing more. A passer whose pings are keyed to
another res-7 cell (another partition) is not seen; a stop within 100 m before a res-7
boundary then waits for passers inside its own cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import h3

from pipeline import _spots, geo

PASS_MPS = 5.0
SAME_DIRECTION_DEG = 30.0
AHEAD_M = (5.0, 100.0)
BEHIND_M = 100.0
ASIDE_M = 15.0
QUEUE_AHEAD_M = (3.0, 40.0)
QUEUE_ASIDE_M = 10.0
ONCOMING_DEG = 120.0
USUAL_M = 25.0
USUAL_MIN = 2
USUAL_DEG = ONCOMING_DEG  # same direction or across it: a stop line, a junction
HISTORY_S = 600.0
CELL_RES = 9
_SAMPLE_M = (0.0, -50.0, -100.0, 25.0, 50.0, 75.0, 100.0)  # points whose cells a spot watches (res-9 edge ~174 m)
_M_PER_DEG = 111_320.0
# A stop further than this in latitude (degrees) is further than USUAL_M: the haversine distance
# is at least EARTH_RADIUS_M * |the latitudes' difference in radians|. 1 % over that bound keeps
# rounding (~1e-15) far from deciding, so the band drops only stops the distance would drop.
_USUAL_DLAT = USUAL_M * 1.01 / math.radians(geo.EARTH_RADIUS_M)


@dataclass(frozen=True, slots=True)
class Around:
    """What a stopped vehicle's surroundings say."""

    passers: int  # distinct devices that went past it in its direction since it stopped
    queued: bool  # another device stands just ahead of it
    usual: bool  # others stopped here shortly before: a stop line, a junction, a jam


@dataclass(slots=True)
class Spot:
    device: str
    lat: float
    lon: float
    heading: float
    since_ts: float
    cells: tuple[str, ...]  # the first is its own cell
    seen: float  # `now` of the device's last still ping: a spot whose device went quiet is lifted
    usual: bool = False  # decided when the stop starts: only stops before it count
    passers: set[str] = field(default_factory=set)
    behind: set[str] = field(default_factory=set)  # seen behind it since it stopped: may pass
    # its flat frame's factors (see offset), computed once: every ping of its cells is measured in
    # it. Its position never changes: a stop that moves is placed as a new Spot.
    cos_lat: float = field(init=False, repr=False, compare=False)
    sin_h: float = field(init=False, repr=False, compare=False)
    cos_h: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.cos_lat = math.cos(math.radians(self.lat))
        h = math.radians(self.heading)
        self.sin_h, self.cos_h = math.sin(h), math.cos(h)


_spots.bind(
    Spot,
    _SAMPLE_M,
    PASS_MPS,
    SAME_DIRECTION_DEG,
    *AHEAD_M,
    BEHIND_M,
    ASIDE_M,
    _M_PER_DEG,
    USUAL_M,
    USUAL_DEG,
    USUAL_MIN,
    HISTORY_S,
    _USUAL_DLAT,
    geo.EARTH_RADIUS_M,
    CELL_RES,
)


def offset(spot: Spot, lat: float, lon: float) -> tuple[float, float]:
    """(metres along the spot's heading, metres to its side) of a point."""
    dx = (lon - spot.lon) * _M_PER_DEG * spot.cos_lat
    dy = (lat - spot.lat) * _M_PER_DEG
    sin_h, cos_h = spot.sin_h, spot.cos_h
    return dx * sin_h + dy * cos_h, abs(dx * cos_h - dy * sin_h)


# The three loops below run in C (pipeline/_spots.c);
# these are their Python twins, kept as the readable rules and run by Spots(native=False): the
# equivalence tests hold both to the original module (tests/support/reference_spots.py).


def _cells(lat: float, lon: float, heading: float) -> tuple[str, ...]:
    """The cells of the points _SAMPLE_M along the heading (the first: the point's own)."""
    out: list[str] = []
    for d in _SAMPLE_M:
        if d == 0.0:
            c = geo.cell(lat, lon, CELL_RES)
        else:
            c = geo.cell(*geo.destination(lat, lon, heading if d > 0 else heading + 180.0, abs(d)), CELL_RES)
        if c not in out:
            out.append(c)
    return tuple(out)


def _see(spots: dict[str, Spot], device: str, ts: float, lat: float, lon: float, speed: float, heading: float) -> None:
    """:meth:`Spots.see` over the spots of the ping's cell."""
    lo, hi = AHEAD_M
    for spot in spots.values():
        if ts <= spot.since_ts or spot.device == device or device in spot.passers:
            continue
        if geo.angle_diff(heading, spot.heading) > SAME_DIRECTION_DEG:
            continue
        along, aside = offset(spot, lat, lon)
        if aside > ASIDE_M:
            continue
        if -BEHIND_M <= along < 0.0:
            spot.behind.add(device)
        elif lo <= along <= hi and speed >= PASS_MPS and device in spot.behind:
            spot.passers.add(device)


History = dict[str, list[tuple[float, float, float, float, str]]]


def _usual(
    history: History, disk: list[str], device: str, lat: float, lon: float, heading: float, since_ts: float
) -> bool:
    """:meth:`Spots._usual` over the stops started in ``disk``'s cells."""
    # its own earlier stops here count as its start: a stop restarted (GPS jitter, a coverage gap)
    # would otherwise find the queue that formed behind it "before" it
    first = since_ts
    lat_lo, lat_hi = lat - _USUAL_DLAT, lat + _USUAL_DLAT  # lat is finite: pings are validated
    others: list[tuple[float, float, str]] = []
    for c in disk:
        for h_since, h_lat, h_lon, h_heading, h_device in history.get(c, ()):
            if not lat_lo <= h_lat <= lat_hi:
                continue
            if h_since < since_ts - HISTORY_S or geo.distance_m(h_lat, h_lon, lat, lon) > USUAL_M:
                continue
            if h_device == device:
                first = min(first, h_since)
            else:
                others.append((h_since, geo.angle_diff(h_heading, heading), h_device))
    seen = {d for h_since, turn, d in others if turn <= USUAL_DEG and (h_since < first or turn > SAME_DIRECTION_DEG)}
    return len(seen) >= USUAL_MIN


class Spots:
    """Stopped devices and what passes them; :meth:`see` is called for every ping of a watched cell.

    ``native``: the loops in C (the default) or their Python twins (the same results).
    """

    def __init__(self, native: bool = True) -> None:
        self.by_device: dict[str, Spot] = {}
        self.by_cell: dict[str, dict[str, Spot]] = {}
        # where stops started lately, per res-9 cell: (since_ts, lat, lon, heading, device)
        self.history: History = {}
        self._disks: dict[str, list[str]] = {}  # a cell → it and its neighbours (a cache)
        self._cells: Callable[[float, float, float], tuple[str, ...]]
        self._scan: Callable[[History, list[str], str, float, float, float, float], bool]
        # see(cell, device, ts, lat, lon, speed, heading): a ping in ``cell`` (only called when
        # ``cell in self.by_cell``). Called for every ping near a stop: the C function is bound to
        # by_cell, no Python frame in between (by_cell is never replaced, only emptied).
        self.see: Callable[[str, str, float, float, float, float, float], None]
        self.native = native  # see is _spots.see: the movers' C glide may call it directly (engine)
        if native:
            self.see = partial(_spots.see, self.by_cell)
            self._cells, self._scan = _spots.cells, _spots.usual
        else:
            self.see = self._see_py
            self._cells, self._scan = _cells, _usual

    def place(self, device: str, lat: float, lon: float, heading: float, since_ts: float, now: float) -> None:
        """The device stands (since ``since_ts``) at its stop's centroid; passers are kept for the same stop."""
        old = self.by_device.get(device)
        if old is not None and old.since_ts == since_ts:
            old.seen = now
            if geo.distance_m(old.lat, old.lon, lat, lon) < 5.0:
                return
            cells = self._cells(lat, lon, heading)
            passers, behind = old.passers, old.behind
            usual = old.usual or self._usual(device, lat, lon, heading, since_ts, cells[0])
        else:
            cells = self._cells(lat, lon, heading)
            passers, behind, usual = set(), set(), self._usual(device, lat, lon, heading, since_ts, cells[0])
            self.history.setdefault(cells[0], []).append((since_ts, lat, lon, heading, device))
        if old is not None:
            self.lift(device)
        spot = Spot(device, lat, lon, heading, since_ts, cells, now, usual, passers, behind)
        self.by_device[device] = spot
        by_cell = self.by_cell
        for c in cells:
            here = by_cell.get(c)
            if here is None:
                by_cell[c] = {device: spot}
            else:
                here[device] = spot

    def lift(self, device: str) -> None:
        spot = self.by_device.pop(device, None)
        if spot is None:
            return
        by_cell = self.by_cell
        for c in spot.cells:
            here = by_cell.get(c)
            if here is not None:
                here.pop(device, None)
                if not here:
                    del by_cell[c]

    def _see_py(self, cell: str, device: str, ts: float, lat: float, lon: float, speed: float, heading: float) -> None:
        _see(self.by_cell[cell], device, ts, lat, lon, speed, heading)

    def around(self, device: str) -> Around | None:
        """What surrounds the device's current stop; None if it is not standing."""
        spot = self.by_device.get(device)
        if spot is None:
            return None
        if spot.passers and not spot.usual:  # only where it matters: the cross road's stops since it stood
            spot.usual = self._usual(device, spot.lat, spot.lon, spot.heading, spot.since_ts, spot.cells[0])
        return Around(len(spot.passers), self._queued(spot), spot.usual)

    def _queued(self, spot: Spot) -> bool:
        return self._ahead(spot) is not None

    def _ahead(self, spot: Spot) -> Spot | None:
        """A device standing just ahead of ``spot`` (see ``queued``), if any."""
        lo, hi = QUEUE_AHEAD_M
        for c in spot.cells:
            for other in self.by_cell.get(c, {}).values():
                if other.device == spot.device or geo.angle_diff(other.heading, spot.heading) > ONCOMING_DEG:
                    continue
                along, aside = offset(spot, other.lat, other.lon)
                if lo <= along <= hi and aside <= QUEUE_ASIDE_M:
                    return other
        return None

    def queue_tail(self, device: str) -> bool:
        """The device stands behind one that itself stands behind another: the tail of a queue.

        Two vehicles that collided stand one behind the other; a third ahead of them in
        the same line is a queue (a red light, a junction spilling back) that the last one
        braked into.
        """
        spot = self.by_device.get(device)
        first = self._ahead(spot) if spot is not None else None
        return first is not None and self._ahead(first) is not None

    def _usual(self, device: str, lat: float, lon: float, heading: float, since_ts: float, home: str) -> bool:
        """Others stopped here: before it in its direction or across it, or since it stood across it.

        The cars that stop behind a stalled car come after it, in its direction; a stop across its
        direction is the cross road's, whenever it happened. ``home``: the cell of (lat, lon).
        """
        disk = self._disks.get(home)
        if disk is None:  # a stop-and-go road starts stops in the same cells over and over
            if len(self._disks) > 100_000:
                self._disks.clear()
            disk = self._disks[home] = h3.grid_disk(home, 1)
        return self._scan(self.history, disk, device, lat, lon, heading, since_ts)

    def standing(self, devices: Iterable[str]) -> dict[str, Spot]:
        """The spots of the standing devices of ``devices`` (e.g. the vehicles of a crash area)."""
        by_device = self.by_device
        return {d: s for d in devices if (s := by_device.get(d)) is not None}

    def expire(self, now: float, quiet_s: float) -> None:
        """Lift the spots of devices not heard standing for ``quiet_s`` (they left unseen or went quiet)."""
        for d in [d for d, s in self.by_device.items() if now - s.seen > quiet_s]:
            self.lift(d)
        # event time and `now` differ by the pipeline's latency only: good enough to prune by
        for c in list(self.history):
            kept = [h for h in self.history[c] if now - h[0] <= HISTORY_S + quiet_s]
            if kept:
                self.history[c] = kept
            else:
                del self.history[c]

    def clear(self) -> None:
        """Forget every spot (after a rebalance: the live pings place them again)."""
        self.by_device.clear()
        self.by_cell.clear()
        self.history.clear()
