"""pipeline.geo: cells, sectors, distances, cone ahead, route corridor, Kafka key partitioning."""

from __future__ import annotations

import itertools
import math

import h3
import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2

from pipeline import geo, pings

PARIS = (48.8566, 2.3522)
PARTITIONS = list(range(8))


# -- cells --------------------------------------------------------------------
@pytest.mark.parametrize("lat,lon", [PARIS, (-33.8688, 151.2093), (0.0, 0.0), (64.1466, -21.9426)])
def test_cell_res7_and_res9_are_valid_and_nested(lat: float, lon: float) -> None:
    c7 = geo.cell(lat, lon, 7)
    c9 = geo.cell(lat, lon, 9)
    assert geo.is_cell(c7) and geo.is_cell(c9)
    assert geo.cell_resolution(c7) == 7
    assert geo.cell_resolution(c9) == 9
    assert geo.cell_resolution(geo.parent(c9, 7)) == 7
    assert c9 in h3.cell_to_children(geo.parent(c9, 7), 9)
    # the centre of a cell lies in that cell
    assert geo.cell(*geo.cell_center(c9), 9) == c9
    assert geo.cell(*geo.cell_center(c7), 7) == c7


@pytest.mark.parametrize("lat,lon", [PARIS, (-33.8688, 151.2093), (64.1466, -21.9426)])
def test_parent_of_res9_cell_is_res7_cell_of_the_point_here(lat: float, lon: float) -> None:
    assert geo.parent(geo.cell(lat, lon, 9), 7) == geo.cell(lat, lon, 7)


def test_h3_children_do_not_tile_their_parent() -> None:
    """H3 is not exactly hierarchical: some points' res-9 parent differs from their res-7 cell.

    (0, 0) is one; about 6 % of points behave like this. Anything that must put all
    pings of one res-9 cell together has to derive the key from the res-9 cell.
    """
    c9 = geo.cell(0.0, 0.0, 9)
    assert geo.parent(c9, 7) != geo.cell(0.0, 0.0, 7)


@pytest.mark.parametrize("lat,lon", [(0.0, 0.0), PARIS, (-33.8688, 151.2093)])
def test_key_cell_is_parent_of_the_res9_cell(lat: float, lon: float) -> None:
    assert geo.key_cell(lat, lon, 7, 9) == geo.parent(geo.cell(lat, lon, 9), 7)


def test_is_cell_refuses_garbage() -> None:
    assert not geo.is_cell("not-a-cell")
    assert not geo.is_cell("")


# -- sectors and angles -------------------------------------------------------
@pytest.mark.parametrize(
    "heading,expected",
    [
        (0.0, 0),
        (22.49, 0),
        (22.5, 1),
        (45.0, 1),
        (90.0, 2),
        (180.0, 4),
        (270.0, 6),
        (337.49, 7),
        (337.5, 0),
        (359.9, 0),
        (360.0, 0),
    ],
)
def test_sector_boundaries(heading: float, expected: int) -> None:
    assert geo.sector(heading) == expected


def test_sector_heading_is_sector_centre() -> None:
    for sec in range(geo.SECTORS):
        assert geo.sector(geo.sector_heading(sec)) == sec
    assert geo.sector_heading(4) == 180.0


@pytest.mark.parametrize(
    "a,b,expected",
    [(0, 0, 0), (10, 350, 20), (350, 10, 20), (0, 180, 180), (90, 271, 179), (-10, 10, 20), (720, 5, 5)],
)
def test_angle_diff_symmetric_and_at_most_180(a: float, b: float, expected: float) -> None:
    assert geo.angle_diff(a, b) == pytest.approx(expected)
    assert geo.angle_diff(b, a) == pytest.approx(expected)
    assert 0.0 <= geo.angle_diff(a, b) <= 180.0


def test_angle_diff_bounded_on_a_grid() -> None:
    for a in range(0, 720, 37):
        for b in range(-360, 360, 41):
            d = geo.angle_diff(a, b)
            assert 0.0 <= d <= 180.0
            assert d == pytest.approx(geo.angle_diff(b, a))


# -- distances and bearings ---------------------------------------------------
def test_one_degree_of_latitude_is_about_111_2_km() -> None:
    assert geo.distance_m(10.0, 20.0, 11.0, 20.0) == pytest.approx(111_195, rel=1e-3)
    # one degree of longitude shrinks with cos(lat)
    assert geo.distance_m(60.0, 0.0, 60.0, 1.0) == pytest.approx(111_195 * 0.5, rel=2e-3)
    assert geo.distance_m(*PARIS, *PARIS) == 0.0


def test_bearing_cardinal_directions() -> None:
    lat, lon = PARIS
    assert geo.bearing_deg(lat, lon, lat + 0.01, lon) == pytest.approx(0.0, abs=1e-6)
    assert geo.bearing_deg(lat, lon, lat, lon + 0.01) == pytest.approx(90.0, abs=0.1)
    assert geo.bearing_deg(lat, lon, lat - 0.01, lon) == pytest.approx(180.0, abs=1e-6)
    assert geo.bearing_deg(lat, lon, lat, lon - 0.01) == pytest.approx(270.0, abs=0.1)


@pytest.mark.parametrize("bearing", [0.0, 33.0, 90.0, 179.0, 250.0, 359.0])
@pytest.mark.parametrize("dist", [50.0, 600.0, 5_000.0])
def test_destination_round_trip(bearing: float, dist: float) -> None:
    lat, lon = PARIS
    lat2, lon2 = geo.destination(lat, lon, bearing, dist)
    assert geo.distance_m(lat, lon, lat2, lon2) == pytest.approx(dist, rel=1e-6)
    assert geo.angle_diff(geo.bearing_deg(lat, lon, lat2, lon2), bearing) < 1e-6


def test_destination_wraps_longitude_across_antimeridian() -> None:
    lat2, lon2 = geo.destination(0.0, 179.999, 90.0, 1_000.0)
    assert -180.0 <= lon2 < -179.99
    assert lat2 == pytest.approx(0.0, abs=1e-9)


# -- the cone ahead -----------------------------------------------------------
@pytest.mark.parametrize("heading", [0.0, 60.0, 135.0, 200.0, 310.0])
def test_cone_ahead_not_behind_not_beside(heading: float) -> None:
    lat, lon = PARIS
    cone = geo.cone_cells(lat, lon, heading, 1_000.0, 9)
    ahead = geo.cell(*geo.destination(lat, lon, heading, 600.0), 9)
    behind = geo.cell(*geo.destination(lat, lon, heading + 180.0, 600.0), 9)
    right = geo.cell(*geo.destination(lat, lon, heading + 90.0, 600.0), 9)
    left = geo.cell(*geo.destination(lat, lon, heading - 90.0, 600.0), 9)
    assert geo.cell(lat, lon, 9) in cone
    assert ahead in cone
    assert behind not in cone
    assert right not in cone
    assert left not in cone
    assert all(geo.cell_resolution(c) == 9 for c in cone)


def test_cone_includes_own_cell_and_neighbours() -> None:
    lat, lon = PARIS
    here = geo.cell(lat, lon, 9)
    cone = geo.cone_cells(lat, lon, 45.0, 1_000.0, 9)
    assert set(h3.grid_disk(here, 1)) <= cone


def test_cone_reach_limits() -> None:
    lat, lon = PARIS
    far = geo.cell(*geo.destination(lat, lon, 90.0, 3_000.0), 9)
    assert far not in geo.cone_cells(lat, lon, 90.0, 1_000.0, 9)
    assert far in geo.cone_cells(lat, lon, 90.0, 3_600.0, 9)
    # every cell beyond the direct neighbours has its centre within the reach and the angle
    here = geo.cell(lat, lon, 9)
    for c in geo.cone_cells(lat, lon, 90.0, 1_000.0, 9) - set(h3.grid_disk(here, 1)):
        clat, clon = geo.cell_center(c)
        assert geo.distance_m(lat, lon, clat, clon) <= 1_000.0
        assert geo.angle_diff(geo.bearing_deg(lat, lon, clat, clon), 90.0) <= 35.0


# -- corridor along a route ---------------------------------------------------
def _route(lat: float, lon: float, bearing: float, length: float, step: float) -> list[tuple[float, float]]:
    return [geo.destination(lat, lon, bearing, d) for d in _frange(0.0, length, step)]


def _frange(start: float, stop: float, step: float) -> list[float]:
    n = round((stop - start) / step)
    return [start + i * step for i in range(n + 1)]


def _dist_to_segment_m(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance point → segment on a local equirectangular plane (fine at city scale)."""
    k = math.cos(math.radians(a[0]))

    def xy(q: tuple[float, float]) -> tuple[float, float]:
        return (q[1] - a[1]) * k * 111_195.0, (q[0] - a[0]) * 111_195.0

    (px, py), (bx, by) = xy(p), xy(b)
    t = max(0.0, min(1.0, (px * bx + py * by) / (bx * bx + by * by)))
    return math.hypot(px - t * bx, py - t * by)


def _dist_to_route_m(p: tuple[float, float], route: list[tuple[float, float]]) -> float:
    return min(_dist_to_segment_m(p, a, b) for a, b in itertools.pairwise(route))


@pytest.mark.parametrize("bearing", [0.0, 75.0, 130.0])
def test_corridor_contains_vertices_and_near_cells_not_far_ones(bearing: float) -> None:
    lat, lon = PARIS
    route = _route(lat, lon, bearing, 2_000.0, 500.0)
    cells = geo.corridor_cells(route, 150.0, 9)
    for v in route:
        assert geo.cell(*v, 9) in cells
    # cells ~100 m off the line (centre within 100 m) are in the corridor
    region = set().union(*(h3.grid_disk(geo.cell(*v, 9), 3) for v in route))
    near = {c for c in region if _dist_to_route_m(geo.cell_center(c), route) <= 100.0}
    assert len(near) >= 4
    assert near <= cells
    # a point 100 m to either side of the middle of the route
    mid = geo.destination(lat, lon, bearing, 1_000.0)
    for side in (90.0, -90.0):
        p = geo.destination(*mid, bearing + side, 100.0)
        c = geo.cell(*p, 9)
        if _dist_to_route_m(geo.cell_center(c), route) <= 150.0:
            assert c in cells
    # nothing 1 km away
    for side in (90.0, -90.0):
        assert geo.cell(*geo.destination(*mid, bearing + side, 1_000.0), 9) not in cells
    for c in cells:
        assert _dist_to_route_m(geo.cell_center(c), route) < 400.0


def test_corridor_degenerate_routes() -> None:
    assert geo.corridor_cells([], 150.0, 9) == set()
    assert geo.corridor_cells([PARIS], 150.0, 9) == {geo.cell(*PARIS, 9)}


def test_corridor_contains_every_cell_the_route_passes_through() -> None:
    # a straight 2 km route; sample it every 10 m and require the cell of every sample
    route = _route(48.2, 9.0, 9.0, 2_000.0, 500.0)
    cells = geo.corridor_cells(route, 150.0, 9)
    on_route = {geo.cell(*geo.destination(48.2, 9.0, 9.0, d), 9) for d in _frange(0.0, 2_000.0, 10.0)}
    assert on_route - cells == set()


# -- Kafka key → partition ----------------------------------------------------
def _partition(key: str) -> int:
    return int(DefaultPartitioner()(key.encode(), PARTITIONS, PARTITIONS))


def test_murmur2_is_java_compatible() -> None:
    # vectors from Kafka's own UtilsTest (signed Java ints)
    for data, java in [(b"21", -973932308), (b"foobar", -790332482), (b"abc", 479470107)]:
        assert murmur2(data) & 0xFFFFFFFF == java & 0xFFFFFFFF


def test_same_cell_same_partition() -> None:
    key = geo.cell(*PARIS, 7)
    parts = {_partition(key) for _ in range(20)}
    assert len(parts) == 1
    assert parts.pop() in PARTITIONS


def test_res9_cells_of_one_res7_parent_share_key_and_partition() -> None:
    key = geo.cell(*PARIS, 7)
    children = h3.cell_to_children(key, 9)
    assert len(children) == 49
    assert {geo.parent(c, 7) for c in children} == {key}
    assert {_partition(geo.parent(c, 7)) for c in children} == {_partition(key)}


def _points_inside(c9: str) -> list[tuple[float, float]]:
    """The centre of a res-9 cell and points 90 % of the way to each of its vertices."""
    clat, clon = geo.cell_center(c9)
    pts = [(clat, clon)] + [(clat + 0.9 * (a - clat), clon + 0.9 * (b - clon)) for a, b in h3.cell_to_boundary(c9)]
    assert {geo.cell(lat, lon, 9) for lat, lon in pts} == {c9}
    return pts


def test_all_pings_of_one_res9_cell_land_on_one_partition() -> None:
    """The ping key (group_by_key, res 7) must keep each res-9 cell on one partition."""
    c9 = "891fb466227ffff"  # a res-9 cell in Paris straddling two res-7 cells
    batch = [
        {"device_id": "d", "seq": i, "lat": lat, "lon": lon} for i, (lat, lon) in enumerate(_points_inside(c9))
    ]
    keys = pings.group_by_key(batch, 7)
    assert {_partition(k) for k in keys} == {_partition(geo.parent(c9, 7))}


def test_distinct_keys_spread_over_partitions() -> None:
    keys = {geo.cell(*geo.destination(*PARIS, 90.0, i * 2_500.0), 7) for i in range(60)}
    assert len(keys) > 30
    assert len({_partition(k) for k in keys}) >= 6
