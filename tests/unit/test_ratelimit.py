"""pipeline.ratelimit: per-device token buckets."""

from __future__ import annotations

import pytest

from pipeline.ratelimit import TokenBuckets

T0 = 1_000.0


def test_burst_then_refusal_with_positive_wait() -> None:
    tb = TokenBuckets(rate=2.0, burst=5.0)
    assert [tb.take("a", T0) for _ in range(5)] == [0.0] * 5
    wait = tb.take("a", T0)
    assert wait == pytest.approx(0.5)  # one token at 2 tokens/s
    # refusals do not consume: the wait stays the same, it does not grow
    assert tb.take("a", T0) == pytest.approx(0.5)


def test_refill_over_time() -> None:
    tb = TokenBuckets(rate=2.0, burst=5.0)
    for _ in range(5):
        tb.take("a", T0)
    assert tb.take("a", T0 + 0.25) == pytest.approx(0.25)
    assert tb.take("a", T0 + 0.5) == 0.0
    assert tb.take("a", T0 + 0.5) > 0.0
    # a long pause refills up to the burst, never beyond
    assert [tb.take("a", T0 + 3600) for _ in range(5)] == [0.0] * 5
    assert tb.take("a", T0 + 3600) > 0.0


def test_steady_rate_is_allowed() -> None:
    tb = TokenBuckets(rate=2.0, burst=1.0)
    assert all(tb.take("a", T0 + i * 0.5) == 0.0 for i in range(100))
    assert tb.take("a", T0 + 49.5 + 0.1) > 0.0


def test_devices_are_independent() -> None:
    tb = TokenBuckets(rate=1.0, burst=3.0)
    for _ in range(3):
        assert tb.take("flood", T0) == 0.0
    assert tb.take("flood", T0) > 0.0
    assert [tb.take("calm", T0) for _ in range(3)] == [0.0] * 3
    assert tb.take("calm", T0) > 0.0


def test_cost_and_wait_for_cost() -> None:
    tb = TokenBuckets(rate=4.0, burst=10.0)
    assert tb.take("a", T0, cost=8.0) == 0.0
    assert tb.take("a", T0, cost=4.0) == pytest.approx(0.5)  # 2 left, 2 more at 4/s


def test_eviction_keeps_limits_of_busy_devices() -> None:
    tb = TokenBuckets(rate=1.0, burst=2.0, max_keys=3)
    tb.take("busy", T0)
    tb.take("busy", T0)
    tb.take("idle1", T0 - 100)
    tb.take("idle2", T0 - 100)
    # a fourth key evicts the buckets that have refilled completely, not the busy one
    assert tb.take("new", T0) == 0.0
    assert tb.take("busy", T0) > 0.0


def test_clock_stepping_back_does_not_lock_devices_out() -> None:
    tb = TokenBuckets(rate=2.0, burst=30.0)
    assert tb.take("a", T0) == 0.0  # 29 tokens left
    assert tb.take("a", T0 - 600.0) == 0.0
