"""pipeline.speed: per-cell event-time speed windows with (device, seq) dedupe."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import pings
from pipeline.speed import BIN_PER_MPS, BUCKET_S, DEVICE_TTL_S, SEQ_WINDOW, WINDOW_S, CellSpeedWindow

NOW = 1_700_000_000.0
HALF_BIN = 0.5 / BIN_PER_MPS


def _quantile_ref(values: list[float], q: float) -> float:
    xs = sorted(values)
    return xs[math.floor(q * (len(xs) - 1))]


def _samples(w: CellSpeedWindow, now: float = NOW) -> int:
    return sum(s.samples for s in w.stats(now).values())


# -- statistics against a reference -------------------------------------------
def test_stats_match_reference() -> None:
    rng = random.Random(7)
    for trial in range(20):
        n = rng.randint(1, 400)
        speeds = [round(rng.uniform(0.0, 35.0), 3) for _ in range(n)]
        w = CellSpeedWindow()
        for i, v in enumerate(speeds):
            ts = NOW - rng.uniform(0.0, WINDOW_S - BUCKET_S)
            assert w.add(f"dev{i % 9}", i, ts, v, rng.uniform(-22.0, 22.0) % 360.0, NOW)
        stats = w.stats(NOW)
        assert list(stats) == [0], trial
        s = stats[0]
        assert s.sector == 0
        assert s.samples == n
        assert s.devices == min(n, 9)
        assert s.mean_mps == pytest.approx(statistics.mean(speeds), rel=1e-12)
        assert abs(s.median_mps - _quantile_ref(speeds, 0.5)) <= HALF_BIN + 1e-9
        assert abs(s.p85_mps - _quantile_ref(speeds, 0.85)) <= HALF_BIN + 1e-9
        assert s.median_mps <= s.p85_mps


def test_stats_single_ping() -> None:
    w = CellSpeedWindow()
    assert w.add("a", 1, NOW - 5, 12.3, 90.0, NOW)
    (s,) = w.stats(NOW).values()
    assert (s.sector, s.samples, s.devices) == (2, 1, 1)
    assert s.mean_mps == 12.3
    assert s.median_mps == s.p85_mps == 12.25  # centre of the [12.0, 12.5) bin


def test_stats_carry_counts_not_device_ids() -> None:
    w = CellSpeedWindow()
    w.add("secret-device", 1, NOW, 5.0, 0.0, NOW)
    assert "secret-device" not in repr(w.stats(NOW))


# -- dedupe -------------------------------------------------------------------
def test_same_device_seq_counts_once() -> None:
    w = CellSpeedWindow()
    assert w.add("a", 5, NOW - 1, 10.0, 0.0, NOW)
    assert not w.add("a", 5, NOW - 1, 10.0, 0.0, NOW)
    assert not w.add("a", 5, NOW - 1, 10.0, 0.0, NOW + 1)
    assert _samples(w) == 1
    # the same seq of another device is another ping
    assert w.add("b", 5, NOW - 1, 10.0, 0.0, NOW)
    assert _samples(w) == 2


def test_replayed_batch_in_reverse_order_counts_once() -> None:
    batch = [("a", seq, NOW - 100 + seq, 8.0 + seq % 5, 45.0) for seq in range(40)]
    w = CellSpeedWindow()
    assert all(w.add(d, s, ts, v, h, NOW) for d, s, ts, v, h in batch)
    before = w.stats(NOW)
    assert not any(w.add(d, s, ts, v, h, NOW) for d, s, ts, v, h in reversed(batch))
    assert w.stats(NOW) == before
    assert _samples(w) == 40


def test_out_of_order_within_seq_window_each_counted_once() -> None:
    seqs = [300, 100, 299, 45, 200, 46, 101, 298, 60]
    assert max(seqs) - min(seqs) < SEQ_WINDOW
    w = CellSpeedWindow()
    for s in seqs:
        assert w.add("a", s, NOW - 10, 10.0, 0.0, NOW), s
    for s in seqs:
        assert not w.add("a", s, NOW - 10, 10.0, 0.0, NOW), s
    assert _samples(w) == len(seqs)


def test_seq_older_than_window_below_hwm_is_refused() -> None:
    w = CellSpeedWindow()
    assert w.add("a", 1000, NOW, 10.0, 0.0, NOW)
    assert not w.add("a", 1000 - SEQ_WINDOW, NOW, 10.0, 0.0, NOW)
    assert not w.add("a", 3, NOW, 10.0, 0.0, NOW)
    assert w.add("a", 1000 - SEQ_WINDOW + 1, NOW, 10.0, 0.0, NOW)
    assert _samples(w) == 2


def test_big_seq_jump_resets_window() -> None:
    w = CellSpeedWindow()
    assert w.add("a", 10, NOW, 10.0, 0.0, NOW)
    assert w.add("a", 10 + 5 * SEQ_WINDOW, NOW, 10.0, 0.0, NOW)
    assert not w.add("a", 10 + 5 * SEQ_WINDOW, NOW, 10.0, 0.0, NOW)
    assert w.add("a", 9 + 5 * SEQ_WINDOW, NOW, 10.0, 0.0, NOW)
    assert not w.add("a", 10, NOW, 10.0, 0.0, NOW)


def test_devices_counted_distinct() -> None:
    w = CellSpeedWindow()
    for dev in ("a", "b", "c"):
        for seq in range(4):
            assert w.add(dev, seq, NOW - seq, 10.0, 0.0, NOW)
    (s,) = w.stats(NOW).values()
    assert (s.samples, s.devices) == (12, 3)


def test_opposite_headings_are_separate_sectors() -> None:
    w = CellSpeedWindow()
    for i, dev in enumerate("abc"):
        w.add(dev, 1, NOW, 20.0 + i, 10.0, NOW)  # northbound: sector 0
        w.add(dev, 2, NOW, 2.0, 190.0, NOW)  # southbound jam: sector 4
    stats = w.stats(NOW)
    assert set(stats) == {0, 4}
    assert stats[0].samples == stats[4].samples == 3
    assert stats[0].median_mps > 19.0
    assert stats[4].median_mps == 2.25
    assert stats[4].mean_mps == 2.0


# -- event time ---------------------------------------------------------------
def test_ping_older_than_window_is_refused_and_not_remembered() -> None:
    w = CellSpeedWindow()
    assert not w.add("a", 1, NOW - WINDOW_S, 10.0, 0.0, NOW)
    assert not w.add("a", 2, NOW - WINDOW_S - 1000, 10.0, 0.0, NOW)
    assert w.is_empty()
    assert w.add("a", 3, NOW - WINDOW_S + 1, 10.0, 0.0, NOW)
    assert _samples(w) == 1


def test_stats_exclude_buckets_older_than_window() -> None:
    w = CellSpeedWindow()
    t0 = 1_700_000_010.0  # inside the bucket [1_700_000_010 - 10, +30)
    start = t0 // BUCKET_S * BUCKET_S
    w.add("a", 1, t0, 5.0, 0.0, t0)
    w.add("b", 1, t0 + 200, 15.0, 0.0, t0 + 200)
    assert _samples(w, t0 + 200) == 2
    # the first bucket ends at start + 30: it leaves the window once now - 300 reaches that
    assert _samples(w, start + BUCKET_S + WINDOW_S - 1) == 2
    s = w.stats(start + BUCKET_S + WINDOW_S)
    assert sum(x.samples for x in s.values()) == 1
    assert s[0].mean_mps == 15.0
    assert s[0].devices == 1


def test_expire_drops_old_buckets_and_idle_devices() -> None:
    w = CellSpeedWindow()
    w.add("old", 1, NOW, 5.0, 0.0, NOW)
    w.add("new", 1, NOW + 200, 5.0, 0.0, NOW + 200)
    w.expire(NOW + 200)
    assert len(w.buckets) == 2 and set(w.seen) == {"old", "new"}
    later = NOW + DEVICE_TTL_S + 1
    w.expire(later)
    assert set(w.seen) == {"new"}
    assert all(start + BUCKET_S > later - WINDOW_S - BUCKET_S for start in w.buckets)
    assert len(w.buckets) == 1
    assert not w.is_empty()


def test_expiry_with_nothing_due_is_cheap() -> None:
    """A busy cell is expired at every rescan: it must not rebuild its merged buckets nor walk its devices."""
    from pipeline import speed

    w = CellSpeedWindow()
    for i in range(60):
        w.add(f"d{i}", 1, NOW - 200 + 3 * i, 10.0, 0.0, NOW)
    first = w.stats(NOW + 1)
    assert w.merges == 1  # the closed buckets merged once...
    assert w.expire(NOW + 1) == []
    assert w.stats(NOW + 1) == first and w.merges == 1  # ...and not again after an expiry that dropped nothing
    swept = NOW + DEVICE_TTL_S - 10  # every device last seen at NOW: none past its TTL yet
    w.expire(swept)
    w.expire(swept + 30)  # all past it now, but swept 30 s ago
    assert len(w.seen) == 60
    w.expire(swept + speed.SEEN_SWEEP_S)
    assert not w.seen


def test_is_empty_after_long_idle() -> None:
    w = CellSpeedWindow()
    assert w.is_empty()
    for seq in range(10):
        w.add(f"d{seq % 3}", seq, NOW - seq, 10.0, seq * 40.0, NOW)
    assert not w.is_empty()
    w.expire(NOW + 3600)
    assert w.is_empty()
    assert w.stats(NOW + 3600) == {}


def test_replay_of_future_stamped_ping_after_device_ttl_is_refused() -> None:
    ts = NOW + 200.0
    assert not isinstance(pings.validate_ping(_good_ping(ts), "a", NOW), str)  # ingest accepts it
    w = CellSpeedWindow()
    assert w.add("a", 1, ts, 10.0, 0.0, NOW)
    w.expire(NOW + DEVICE_TTL_S + 1)  # the publish timer runs this every few seconds
    assert not w.add("a", 1, ts, 10.0, 0.0, NOW + DEVICE_TTL_S + 40)
    assert _samples(w, NOW + DEVICE_TTL_S + 40) == 1


def _good_ping(ts: float) -> dict[str, object]:
    return {"seq": 1, "ts": ts, "lat": 48.85, "lon": 2.35, "speed_mps": 10.0, "heading_deg": 0.0, "accuracy_m": 5.0}


# -- persistence --------------------------------------------------------------
def test_bytes_round_trip_preserves_stats_and_dedupe() -> None:
    w = CellSpeedWindow()
    rng = random.Random(3)
    sent = []
    for seq in range(300):
        dev = f"d{seq % 4}"
        p = (dev, seq, NOW - rng.uniform(0, 250), rng.uniform(0, 30), rng.uniform(0, 360))
        sent.append(p)
        assert w.add(*p, NOW)
    w2 = CellSpeedWindow.from_bytes(w.to_bytes())
    assert w2.stats(NOW) == w.stats(NOW)
    assert w2.buckets == w.buckets
    assert {d: w2.seen[d] for d in w2.seen} == {d: w.seen[d] for d in w.seen}
    assert w2.to_bytes() == w.to_bytes()
    # the restored state still recognises every replay
    assert not any(w2.add(*p, NOW) for p in sent)
    assert w2.stats(NOW) == w.stats(NOW)
    # and still counts new pings
    assert w2.add("d0", 300, NOW, 10.0, 0.0, NOW)


def test_empty_round_trip() -> None:
    assert CellSpeedWindow.from_bytes(CellSpeedWindow().to_bytes()).is_empty()


# -- property: duplicates in any order count once -------------------------------
_ids = st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, SEQ_WINDOW - 1))


@settings(database=None, max_examples=150, deadline=None)
@given(data=st.data())
def test_samples_equal_distinct_device_seq(data: st.DataObject) -> None:
    base = data.draw(st.lists(_ids, min_size=1, max_size=60, unique=True), label="distinct")
    dups = data.draw(st.lists(st.sampled_from(base), max_size=60), label="dups")
    order = data.draw(st.permutations(base + dups), label="order")
    w = CellSpeedWindow()
    accepted = 0
    for dev, seq in order:
        # a ping's content is a function of its identity: a replay carries the same fields
        accepted += w.add(dev, seq, NOW - seq % 250, float(seq % 31), float(seq * 37 % 360), NOW)
    assert accepted == len(base)
    assert _samples(w) == len(set(base))
    assert sum(s.devices for s in w.stats(NOW).values()) >= len({d for d, _ in base})


def _naive_stats(w: CellSpeedWindow, now: float) -> dict[int, tuple[int, float, int, float, float]]:
    """Every in-window bucket merged from scratch: what the cached reading must equal."""
    merged: dict[int, tuple[int, float, dict[int, int], set[str]]] = {}
    for start, sectors in w.buckets.items():
        if start + BUCKET_S <= now - WINDOW_S or start > now:
            continue
        for sec, b in sectors.items():
            n, total, hist, devs = merged.get(sec, (0, 0.0, {}, set()))
            for k, v in b.hist.items():
                hist[k] = hist.get(k, 0) + v
            merged[sec] = (n + b.n, total + b.total, hist, devs | b.devices)
    out = {}
    for sec, (n, total, hist, devs) in merged.items():
        ranks = sorted(k for k, c in hist.items() for _ in range(c))
        out[sec] = (n, round(total / n, 9), len(devs), (ranks[int(0.5 * (n - 1))] + 0.5) / BIN_PER_MPS,
                    (ranks[int(0.85 * (n - 1))] + 0.5) / BIN_PER_MPS)
    return out


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_cached_reading_equals_a_full_merge_through_late_pings_and_expiry(data: st.DataObject) -> None:
    # the closed buckets are merged once and reused; late pings must reach the merge, expiry drop it
    w = CellSpeedWindow()
    now = 10_000.0
    seqs: dict[str, int] = {}
    for _ in range(data.draw(st.integers(5, 80))):
        now += data.draw(st.floats(0.0, 40.0))
        dev = f"d{data.draw(st.integers(0, 6))}"
        seqs[dev] = seqs.get(dev, 0) + 1
        late = data.draw(st.floats(0.0, 200.0))  # backlog uploads land in closed buckets
        w.add(dev, seqs[dev], now - late, data.draw(st.floats(0.0, 40.0)), data.draw(st.sampled_from([0.0, 180.0])),
              now)
        if data.draw(st.booleans()):
            got = {s.sector: (s.samples, round(s.mean_mps, 9), s.devices, s.median_mps, s.p85_mps)
                   for s in w.stats(now).values()}
            assert got == _naive_stats(w, now)
        if data.draw(st.integers(0, 9)) == 0:
            w.expire(now)


def test_a_late_ping_is_added_to_the_merged_closed_buckets_not_merged_again() -> None:
    """Catching up, most pings are late: each must not cost a merge of the whole window."""
    w = CellSpeedWindow()
    now = 10_000.0
    for i in range(8):
        w.add(f"d{i}", 1, now - 30.0 * i, 10.0 + i, 0.0, now)
    w.stats(now)
    assert w.merges == 1
    w.add("late", 1, now - 100.0, 30.0, 0.0, now)  # a closed bucket the merge holds
    w.add("late", 2, now - 290.0, 31.0, 180.0, now)  # a new sector in the oldest bucket held
    got = {s.sector: (s.samples, round(s.mean_mps, 9), s.devices, s.median_mps, s.p85_mps)
           for s in w.stats(now).values()}
    assert got == _naive_stats(w, now) and got[0][0] == 9 and got[4][0] == 1
    assert w.merges == 1  # the late pings went into the merge: no second one


def test_could_reach_bounds_the_devices_of_a_sector_from_above() -> None:
    """No sector with k devices → False (no reading needed); True whenever one may have them."""
    w = CellSpeedWindow()
    w.add("a", 1, 1000.0, 10.0, 0.0, 1000.0)
    w.add("b", 1, 1000.0, 10.0, 0.0, 1000.0)
    w.add("c", 1, 1000.0, 10.0, 180.0, 1000.0)  # three devices, two and one per direction
    assert not w.could_reach(3)
    assert w.could_reach(2)
    w.add("d", 1, 1040.0, 10.0, 180.0, 1040.0)
    w.add("c", 2, 1040.0, 10.0, 180.0, 1040.0)  # c again, in the next bucket: counted twice by the bound
    assert w.could_reach(3)
    assert max(s.devices for s in w.stats(1040.0).values()) == 2  # (the bound is only an upper one)
