"""Simulation time → ping timestamps and wall-clock pacing.

The stream worker judges event time (``ts``) against its own wall clock: a speed window
is the 5 minutes ending at *now*, and a ping stamped ahead of now is not counted yet. So a
run cannot simply stamp pings ``start + sim_time`` and race ahead: its future pings would be
invisible to the traffic medians. Instead the run starts ``lag_s`` in the past and catches
up: sim time advances ``speedup`` times faster than the wall clock until the stamps reach
the present, then at 1×. Every stamp is ``t0 + sim_time`` (one consistent time line for
every phone, never ahead of the worker's now), and the whole run saves ``lag_s`` of wall
time. ``lag_s`` is bounded by :data:`MAX_LAG_S` so every stamp stays inside the worker's
5-minute window (a 90-s stall still needs the traffic around it in that window).
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

MAX_LAG_S = 240.0  # < the worker's 300-s window, with a minute of traffic in it at the start


def lag_for(duration_s: float, speedup: float, max_lag_s: float = MAX_LAG_S) -> float:
    """How far in the past to start so that a run at ``speedup`` catches up at its end (at most ``max_lag_s``)."""
    if speedup <= 1.0:
        return 0.0
    return min(max_lag_s, duration_s * (1.0 - 1.0 / speedup))


@dataclass
class SimClock:
    """Maps sim seconds to event timestamps and to the wall time they are due at."""

    wall0: float
    lag_s: float
    speedup: float
    marks: list[tuple[float, float]] = field(default_factory=list)  # (wall, sim) as the run went

    @classmethod
    def start(cls, duration_s: float, speedup: float, now: float | None = None) -> SimClock:
        w = time.time() if now is None else now
        return cls(w, lag_for(duration_s, speedup), max(1.0, speedup))

    @property
    def t0(self) -> float:
        """The event timestamp of sim time 0."""
        return self.wall0 - self.lag_s

    def ts(self, sim_s: float) -> float:
        return self.t0 + sim_s

    def due(self, sim_s: float) -> float:
        """Wall time at which sim time ``sim_s`` may be simulated (never before its stamp is past)."""
        return self.wall0 + max(sim_s / self.speedup, sim_s - self.lag_s)

    def mark(self, sim_s: float, wall: float | None = None) -> None:
        """Record that sim time ``sim_s`` was reached at ``wall`` (to map wall times back)."""
        self.marks.append((time.time() if wall is None else wall, sim_s))

    def sim_at(self, wall: float) -> float:
        """The sim time the run had reached at ``wall`` (interpolated between marks)."""
        m = self.marks
        if not m:
            return 0.0
        i = bisect.bisect_left(m, (wall, float("-inf")))
        if i == 0:
            return m[0][1]
        if i >= len(m):
            return m[-1][1] + (wall - m[-1][0])  # after the run: 1× onwards
        (w0, s0), (w1, s1) = m[i - 1], m[i]
        return s0 if w1 <= w0 else s0 + (s1 - s0) * (wall - w0) / (w1 - w0)
