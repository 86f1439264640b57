"""Geography in one place: H3 cells, headings, distances, the cone ahead.

h3 takes (lat, lng); GeoJSON and shapely take (lng, lat). Every conversion
between the two orders happens here and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import h3

EARTH_RADIUS_M = 6_371_008.8
SECTORS = 8
SECTOR_WIDTH = 360.0 / SECTORS


def cell(lat: float, lon: float, res: int) -> str:
    """The H3 cell (hex string) holding a point."""
    return str(h3.latlng_to_cell(lat, lon, res))


def key_cell(lat: float, lon: float, key_res: int, cell_res: int) -> str:
    """The Kafka key of a point: the ``key_res`` parent of its ``cell_res`` cell.

    Not ``cell(lat, lon, key_res)``: H3 children do not tile their parent, so that
    would split one ``cell_res`` cell over two keys (and partitions).
    """
    return str(h3.cell_to_parent(h3.latlng_to_cell(lat, lon, cell_res), key_res))


def parent(cell_id: str, res: int) -> str:
    return str(h3.cell_to_parent(cell_id, res))


def cell_center(cell_id: str) -> tuple[float, float]:
    """(lat, lon) of a cell's centre."""
    lat, lon = h3.cell_to_latlng(cell_id)
    return float(lat), float(lon)


def cell_resolution(cell_id: str) -> int:
    return int(h3.get_resolution(cell_id))


def is_cell(value: str) -> bool:
    try:
        return bool(h3.is_valid_cell(value))
    except (TypeError, ValueError):
        return False


def sector(heading_deg: float) -> int:
    """Heading sector 0..7; sector 0 covers [337.5, 22.5) around north."""
    return int(((heading_deg + SECTOR_WIDTH / 2) % 360.0) // SECTOR_WIDTH)


def sector_heading(sec: int) -> float:
    return (sec * SECTOR_WIDTH) % 360.0


def angle_diff(a: float, b: float) -> float:
    """Smallest absolute difference of two bearings, 0..180."""
    d = abs(a - b) % 360.0
    return 360.0 - d if d > 180.0 else d


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from point 1 to point 2, 0..360 clockwise from north."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    x = math.sin(dl) * math.cos(p2)
    y = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return (math.degrees(math.atan2(x, y)) + 360.0) % 360.0


def destination(lat: float, lon: float, bearing: float, dist_m: float) -> tuple[float, float]:
    """The point ``dist_m`` away along ``bearing`` (lat, lon)."""
    d = dist_m / EARTH_RADIUS_M
    b = math.radians(bearing)
    p1, l1 = math.radians(lat), math.radians(lon)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


def cone_cells(
    lat: float,
    lon: float,
    heading_deg: float,
    reach_m: float,
    res: int,
    half_angle_deg: float = 35.0,
) -> set[str]:
    """Cells whose centre lies ahead: within ``reach_m`` and ±half_angle of the heading.

    The driver's own cell and its immediate neighbours always count: a driver is
    affected by what happens where they already are.
    """
    here = cell(lat, lon, res)
    spacing = math.sqrt(3) * h3.average_hexagon_edge_length(res, unit="m")
    k = max(1, math.ceil(reach_m / spacing) + 1)
    out: set[str] = set(h3.grid_disk(here, 1))
    for c in h3.grid_disk(here, k):
        clat, clon = h3.cell_to_latlng(c)
        if distance_m(lat, lon, clat, clon) > reach_m:
            continue
        if angle_diff(bearing_deg(lat, lon, clat, clon), heading_deg) <= half_angle_deg:
            out.add(str(c))
    return out


def corridor_cells(route: Sequence[tuple[float, float]], width_m: float, res: int) -> set[str]:
    """Cells along a (lat, lon) polyline, buffered by ``width_m`` (shapely → H3).

    The buffer is made in a local equirectangular frame in metres (city-scale
    routes), then mapped back to (lng, lat) for h3.
    """
    from shapely.affinity import affine_transform
    from shapely.geometry import LineString, mapping

    if len(route) < 2:
        return {cell(route[0][0], route[0][1], res)} if route else set()
    lat0 = math.radians(route[0][0])
    m_per_deg = EARTH_RADIUS_M * math.pi / 180.0
    kx, ky = m_per_deg * max(0.05, math.cos(lat0)), m_per_deg
    line = LineString([(lon * kx, lat * ky) for lat, lon in route])  # shapely is (x=lng, y=lat)
    # h3 keeps cells whose *centre* is inside: widen by one edge so every cell the
    # route itself crosses is in
    poly = line.buffer(width_m + h3.average_hexagon_edge_length(res, unit="m"))
    poly = affine_transform(poly, [1 / kx, 0, 0, 1 / ky, 0, 0])
    cells = {str(c) for c in h3.h3shape_to_cells(h3.geo_to_h3shape(mapping(poly)), res)}
    cells.update(cell(lat, lon, res) for lat, lon in route)
    return cells


def cells_in_bbox(cells: Iterable[str], south: float, west: float, north: float, east: float) -> list[str]:
    out = []
    for c in cells:
        lat, lon = cell_center(c)
        if south <= lat <= north and west <= lon <= east:
            out.append(c)
    return out
