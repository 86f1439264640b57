"""pipeline.detect.spots: who goes past a standing vehicle, whether it queues, whether others stop there."""

from __future__ import annotations

from pipeline import geo
from pipeline.detect import spots
from pipeline.detect.spots import Spots

STOP = (52.4300, 13.5300)
T0 = 1_800_000_000.0
EAST = 90.0


def at(metres_ahead: float, metres_aside: float = 0.0) -> tuple[float, float]:
    """A point ``metres_ahead`` east of the stop (negative: behind) and ``metres_aside`` south of it."""
    lat, lon = geo.destination(*STOP, EAST if metres_ahead >= 0 else EAST + 180.0, abs(metres_ahead))
    return geo.destination(lat, lon, 180.0, metres_aside) if metres_aside else (lat, lon)


def see(
    s: Spots, device: str, ts: float, point: tuple[float, float], speed: float = 14.0, heading: float = EAST
) -> None:
    cell = geo.cell(*point, 9)
    if cell in s.by_cell:
        s.see(cell, device, ts, *point, speed, heading)


def standing(s: Spots | None = None, since: float = T0) -> Spots:
    s = s or Spots()
    s.place("stuck", *STOP, EAST, since, since)
    return s


def test_offsets_along_and_aside() -> None:
    s = standing()
    spot = s.by_device["stuck"]
    along, aside = spots.offset(spot, *at(40.0, 4.0))
    assert abs(along - 40.0) < 0.5 and abs(aside - 4.0) < 0.5
    along, _ = spots.offset(spot, *at(-30.0))
    assert abs(along + 30.0) < 0.5


def test_a_car_from_behind_that_drives_past_is_a_passer() -> None:
    s = standing()
    see(s, "car", T0 + 5, at(-60.0, 3.5))
    see(s, "car", T0 + 10, at(10.0, 3.5))
    assert s.around("stuck") == spots.Around(passers=1, queued=False, usual=False)


def test_what_is_not_going_past() -> None:
    s = standing()
    see(s, "ahead-all-along", T0 + 5, at(20.0))  # queued ahead of it, then drives off: never behind
    see(s, "ahead-all-along", T0 + 10, at(70.0))
    see(s, "oncoming", T0 + 5, at(60.0, 6.0), heading=270.0)
    see(s, "oncoming", T0 + 10, at(-10.0, 6.0), heading=270.0)
    see(s, "next-street", T0 + 5, at(-50.0, 40.0))
    see(s, "next-street", T0 + 10, at(20.0, 40.0))
    see(s, "crawling", T0 + 5, at(-10.0, 3.5), speed=2.0)
    see(s, "crawling", T0 + 10, at(6.0, 3.5), speed=2.0)
    see(s, "before-it-stopped", T0 - 10, at(-50.0, 3.5))
    see(s, "before-it-stopped", T0 - 5, at(20.0, 3.5))
    around = s.around("stuck")
    assert around is not None and around.passers == 0


def test_queued_behind_a_standing_device_ahead_even_one_turning_across() -> None:
    s = standing()
    s.place("ahead", *at(12.0), EAST, T0 - 20, T0)
    assert s.around("stuck") == spots.Around(passers=0, queued=True, usual=False)
    t = standing()
    t.place("turning", *at(15.0, 2.0), 180.0, T0 - 20, T0)
    assert (a := t.around("stuck")) is not None and a.queued
    u = standing()
    u.place("behind", *at(-12.0), EAST, T0 + 5, T0 + 5)
    u.place("oncoming", *at(15.0, 6.0), 270.0, T0 - 20, T0)
    assert (a := u.around("stuck")) is not None and not a.queued


def test_usual_where_two_others_stopped_shortly_before() -> None:
    s = Spots()
    s.place("early-1", *at(5.0), EAST, T0 - 300, T0 - 300)
    s.place("early-2", *at(-8.0), EAST, T0 - 120, T0 - 120)
    s.lift("early-1")
    s.lift("early-2")  # gone since: only their stops are remembered
    assert (a := standing(s).around("stuck")) is not None and a.usual

    one = Spots()
    one.place("early-1", *at(5.0), EAST, T0 - 300, T0 - 300)
    assert (a := standing(one).around("stuck")) is not None and not a.usual

    long_ago = Spots()
    for i in range(3):
        long_ago.place(f"old-{i}", *at(2.0 * i), EAST, T0 - spots.HISTORY_S - 60, T0 - spots.HISTORY_S - 60)
    assert (a := standing(long_ago).around("stuck")) is not None and not a.usual

    after = standing()
    for i in range(3):
        after.place(f"behind-{i}", *at(-7.0 * (i + 1)), EAST, T0 + 5 + i, T0 + 5 + i)
    assert (a := after.around("stuck")) is not None and not a.usual  # the queue behind a stall comes after it


def test_the_same_stop_keeps_its_passers_a_new_stop_starts_afresh() -> None:
    s = standing()
    see(s, "car", T0 + 5, at(-60.0, 3.5))
    see(s, "car", T0 + 10, at(10.0, 3.5))
    s.place("stuck", *at(3.0), EAST, T0, T0 + 20)  # the centroid moved: same stop
    assert (a := s.around("stuck")) is not None and a.passers == 1
    s.place("stuck", *at(200.0), EAST, T0 + 100, T0 + 100)
    assert (a := s.around("stuck")) is not None and a.passers == 0


def test_quiet_spots_are_lifted_history_pruned_and_clear_forgets_all() -> None:
    s = standing()
    s.expire(T0 + 30, 60.0)
    assert "stuck" in s.by_device
    s.expire(T0 + 61, 60.0)
    assert s.by_device == {} and s.by_cell == {}
    s.expire(T0 + spots.HISTORY_S + 61, 60.0)
    assert s.history == {}
    t = standing()
    t.clear()
    assert t.around("stuck") is None and t.history == {} and t.by_cell == {}


def test_queue_tail_needs_a_line_of_two_ahead() -> None:
    """Two stopped one behind the other (a rear-end crash) is no queue; a third ahead of them is."""
    s = standing()
    s.place("hit", *at(8.0), EAST, T0, T0)
    assert not s.queue_tail("stuck") and not s.queue_tail("hit")
    s.place("first", *at(16.0), EAST, T0 - 30, T0)
    assert s.queue_tail("stuck") and not s.queue_tail("hit")
    assert not s.queue_tail("nobody")


def test_usual_counts_stops_across_its_direction_not_the_oncoming_ones() -> None:
    """A junction: the cross road's cars stopped here before; a jam on the other side of the road does not count."""
    junction = Spots()
    for i, heading in enumerate((180.0, 0.0)):  # the cross road's two directions, at its stop lines
        junction.place(f"cross-{i}", *at(8.0, 10.0 * (1 - 2 * i)), heading, T0 - 200 + 30 * i, T0 - 200 + 30 * i)
    assert (a := standing(junction).around("stuck")) is not None and a.usual

    other_side = Spots()
    for i in range(3):
        other_side.place(f"oncoming-{i}", *at(10.0 * i, 6.0), 270.0, T0 - 200 + 30 * i, T0 - 200 + 30 * i)
    assert (a := standing(other_side).around("stuck")) is not None and not a.usual


def test_usual_is_looked_at_again_from_the_settled_centroid() -> None:
    """The first still fix 30 m off (a noisy phone): the stop turns out to be where two others stopped."""
    s = Spots()
    s.place("early-1", *at(2.0), EAST, T0 - 300, T0 - 300)
    s.place("early-2", *at(-3.0), EAST, T0 - 120, T0 - 120)
    s.place("stuck", *at(-30.0), EAST, T0, T0)
    assert (a := s.around("stuck")) is not None and not a.usual
    s.place("stuck", *at(-6.0), EAST, T0, T0 + 20)  # the centroid settles: same stop
    assert (a := s.around("stuck")) is not None and a.usual
    s.place("stuck", *at(-30.0), EAST, T0, T0 + 40)  # once usual, it stays so for this stop
    assert (a := s.around("stuck")) is not None and a.usual


def test_the_cross_roads_stops_since_it_stood_make_it_usual_its_own_roads_do_not() -> None:
    """Waiting at a junction, the cross road's cars stop beside it; behind a stall its own road's cars queue."""
    s = standing()
    see(s, "car", T0 + 5, at(-60.0, 3.5))
    see(s, "car", T0 + 10, at(10.0, 3.5))
    for i, heading in enumerate((0.0, 180.0)):
        s.place(f"cross-{i}", *at(10.0, 12.0 * (1 - 2 * i)), heading, T0 + 30 + i, T0 + 30 + i)
    assert (a := s.around("stuck")) is not None and a.usual and a.passers == 1

    t = standing()
    see(t, "car", T0 + 5, at(-60.0, 3.5))
    see(t, "car", T0 + 10, at(10.0, 3.5))
    for i in range(3):
        t.place(f"behind-{i}", *at(-7.0 * (i + 1), 1.0), EAST + 10.0, T0 + 30 + i, T0 + 30 + i)
    assert (a := t.around("stuck")) is not None and not a.usual


def test_a_restarted_stop_keeps_its_first_start_the_queue_behind_it_is_not_before_it() -> None:
    """A stalled phone's stop restarts (a coverage gap): the cars that queued behind it meanwhile came after it."""
    s = standing()
    for i in range(3):
        s.place(f"behind-{i}", *at(-7.0 * (i + 1)), EAST, T0 + 30 + i, T0 + 30 + i)
    s.lift("stuck")
    s.place("stuck", *at(2.0), EAST, T0 + 120, T0 + 120)  # the same place, a new stop
    assert (a := s.around("stuck")) is not None and not a.usual
