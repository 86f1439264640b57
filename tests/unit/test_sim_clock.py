"""The run's clock: stamps never ahead of the wall clock, the lag caught up at `speedup`."""

from __future__ import annotations

import pytest

from pipeline.sim.clock import MAX_LAG_S, SimClock, lag_for


def test_lag_is_what_the_speedup_can_catch_up_and_never_more_than_the_window_allows() -> None:
    assert lag_for(300, 6.0) == MAX_LAG_S  # 300 × 5/6 = 250 > 240
    assert lag_for(120, 4.0) == pytest.approx(90.0)
    assert lag_for(1000, 1.0) == 0.0


def test_every_stamp_is_in_the_past_when_it_is_due_and_the_run_ends_caught_up() -> None:
    c = SimClock.start(300, 6.0, now=1_000_000.0)
    for t in range(0, 301, 5):
        assert c.ts(t) <= c.due(t) + 1e-9  # the worker never sees a ping from its future
        assert c.due(t) - c.ts(t) <= MAX_LAG_S + 1e-9  # ... nor one older than its window allows
    assert c.due(300) == pytest.approx(1_000_000.0 + 60.0)  # 300 s of sim in 60 s of wall time
    assert c.ts(300) == pytest.approx(c.due(300))  # caught up at the end
    assert c.due(60) == pytest.approx(1_000_000.0 + 10.0)  # ×6 while there is lag to eat


def test_sim_at_maps_wall_times_back_through_the_marks() -> None:
    c = SimClock.start(300, 6.0, now=0.0)
    for t in range(0, 301, 10):
        c.mark(t, wall=c.due(t))
    assert c.sim_at(c.due(120)) == pytest.approx(120.0)
    assert c.sim_at(c.due(125)) == pytest.approx(125.0, abs=0.5)
    assert c.sim_at(-5.0) == 0.0
    assert c.sim_at(c.due(300) + 7.0) == pytest.approx(307.0)  # after the run: 1×
