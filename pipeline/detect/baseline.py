"""Free-flow speed per (res-9 cell, heading sector, hour of week), learned online.

Free flow is the 85th percentile of observed speeds (what most drivers do when
nothing holds them up), read from a bounded histogram of 0.5 m/s bins. Each
histogram halves its counts once it holds :data:`HALVE_AT` samples, so state
stays bounded and the estimate follows slow changes (new speed limit, road
works that became permanent).

Cold start: while the (sector, hour-of-week) histogram has fewer than
:data:`MIN_SAMPLES` samples the hour-agnostic (sector) histogram answers if it
has enough, else :data:`~pipeline.conditions.DEFAULT_FREE_FLOW_MPS`. Answers are
clamped to :data:`MIN_FREE_FLOW_MPS`..:data:`MAX_FREE_FLOW_MPS` so one odd cell
cannot declare a standstill free flow (or a race track).

Hour of week is computed from the ping's event time in UTC, Monday 00:00 UTC =
0. A deployment in another time zone still gets consistent buckets (every
Monday 08:00 local falls in the same bucket); only the labels are shifted.

Feed it deduplicated pings only (those :meth:`CellSpeedWindow.add` accepted),
so retries and replays do not count twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from pipeline.conditions import DEFAULT_FREE_FLOW_MPS

QUANTILE = 0.85
BIN_PER_MPS = 2  # 0.5 m/s bins, as in pipeline.speed
MAX_SPEED_MPS = 45.0  # faster samples go into the top bin: bounded state
MIN_SAMPLE_MPS = 1.0  # standing at a light or parked says nothing about free flow
MIN_SAMPLES = 50
HALVE_AT = 2000
MIN_FREE_FLOW_MPS = 5.0
MAX_FREE_FLOW_MPS = 40.0
HOURS_PER_WEEK = 168
_EPOCH_HOUR_OF_WEEK = 72  # 1970-01-01 00:00 UTC was a Thursday: 3 days after Monday 00:00


@dataclass
class Histogram:
    """Sample counts per 0.5 m/s bin."""

    counts: dict[int, int] = field(default_factory=dict)
    n: int = 0

    def add(self, speed: float) -> None:
        b = int(min(speed, MAX_SPEED_MPS) * BIN_PER_MPS)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.n += 1
        if self.n >= HALVE_AT:
            self.counts = {k: c // 2 for k, c in self.counts.items() if c >= 2}
            self.n = sum(self.counts.values())

    def add_counts(self, hist: dict[int, int]) -> None:
        """Add a histogram of the same 0.5 m/s bins (a closed speed-window bucket)."""
        low, top = int(MIN_SAMPLE_MPS * BIN_PER_MPS), int(MAX_SPEED_MPS * BIN_PER_MPS)
        counts = self.counts
        for b, c in hist.items():
            if b < low:
                continue
            b = min(b, top)
            counts[b] = counts.get(b, 0) + c
            self.n += c
        while self.n >= HALVE_AT:
            self.counts = counts = {k: c // 2 for k, c in counts.items() if c >= 2}
            self.n = sum(counts.values())

    def quantile(self, q: float) -> float:
        """Bin centre holding the ``q`` quantile; 0.0 when empty."""
        if not self.n:
            return 0.0
        rank = q * (self.n - 1)
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen > rank:
                return (b + 0.5) / BIN_PER_MPS
        return (max(self.counts) + 0.5) / BIN_PER_MPS


@dataclass
class CellBaseline:
    """Histograms of one res-9 cell: per (sector, hour of week) and per sector."""

    hours: dict[tuple[int, int], Histogram] = field(default_factory=dict)
    sectors: dict[int, Histogram] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.sectors

    def to_bytes(self) -> bytes:
        def enc(h: Histogram) -> dict[str, int]:
            return {str(k): c for k, c in h.counts.items()}

        return orjson.dumps(
            {
                "h": {f"{sec}:{how}": enc(h) for (sec, how), h in self.hours.items()},
                "s": {str(sec): enc(h) for sec, h in self.sectors.items()},
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> CellBaseline:
        doc = orjson.loads(raw)

        def dec(d: dict[str, int]) -> Histogram:
            counts = {int(k): int(c) for k, c in d.items()}
            return Histogram(counts, sum(counts.values()))

        hours = {}
        for key, d in doc["h"].items():
            sec, how = key.split(":")
            hours[(int(sec), int(how))] = dec(d)
        return cls(hours=hours, sectors={int(k): dec(d) for k, d in doc["s"].items()})


def hour_of_week(ts: float) -> int:
    """0..167, Monday 00:00 UTC = 0."""
    return int((ts // 3600 + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK)


def update(state: CellBaseline | None, sector: int, speed_mps: float, ts: float) -> CellBaseline:
    """Count one observed speed of ``sector`` at event time ``ts`` (a histogram of one)."""
    return fold(state, sector, {int(speed_mps * BIN_PER_MPS): 1}, ts)


def fold(state: CellBaseline | None, sector: int, hist: dict[int, int], ts: float) -> CellBaseline:
    """Count a whole histogram of ``sector`` observed at ``ts`` — what :func:`update` does per speed.

    The stream folds each 30-s speed-window bucket in as it leaves the window:
    one dict merge per bucket instead of two histogram updates per ping, and
    only deduplicated pings (the window's) ever reach the baseline.
    """
    if state is None:
        state = CellBaseline()
    key = (sector, hour_of_week(ts))
    hour = state.hours.get(key)
    if hour is None:
        hour = state.hours[key] = Histogram()
    hour.add_counts(hist)
    sec = state.sectors.get(sector)
    if sec is None:
        sec = state.sectors[sector] = Histogram()
    sec.add_counts(hist)
    if not hour.n:
        del state.hours[key]  # only standing-still bins: nothing learned
    if not sec.n:
        del state.sectors[sector]
    return state


def _clamp(v: float) -> float:
    return min(MAX_FREE_FLOW_MPS, max(MIN_FREE_FLOW_MPS, v))


def free_flow(state: CellBaseline | None, sector: int, ts: float) -> float:
    """Free-flow speed (m/s) of ``sector`` at the hour of week of ``ts``, with the cold-start fallbacks."""
    if state is not None:
        hour = state.hours.get((sector, hour_of_week(ts)))
        if hour is not None and hour.n >= MIN_SAMPLES:
            return _clamp(hour.quantile(QUANTILE))
        sec = state.sectors.get(sector)
        if sec is not None and sec.n >= MIN_SAMPLES:
            return _clamp(sec.quantile(QUANTILE))
    return DEFAULT_FREE_FLOW_MPS


def free_flow_by_sector(state: CellBaseline | None, ts: float) -> dict[int, float]:
    """Free flow of every sector the cell has seen (the ``free_flow`` of ``build_condition``)."""
    if state is None:
        return {}
    return {sec: free_flow(state, sec, ts) for sec in state.sectors}
