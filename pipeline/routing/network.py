"""A road network from a SUMO ``.net.xml`` (OpenStreetMap-derived), geo-referenced.

SUMO networks are in projected metres: ``<location netOffset projParameter>`` says how
(UTM, for the Berlin networks shipped in the ``eclipse-sumo`` package). We parse the XML
ourselves (``iterparse``; sumolib's reader builds an object per lane and needs pyproj to
un-project) and keep what routing needs: junction-to-junction edges a car may use, with
their length, speed limit and shape as (lat, lon), and the turns a car may take between
them: SUMO's ``<connection from to fromLane toLane via>`` elements from a car lane of one
kept edge to a car lane of another (through an inner lane cars may use, when it names one).
A turn the net does not list (a banned left, a U-turn where none is built) is not driven.
"""

from __future__ import annotations

import importlib.util
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Vehicle classes that mean "a passenger car may drive here" (SUMO's allow/disallow lists).
CAR = "passenger"
BERLIN_NETS = ("DRT", "A10KW")


@dataclass(frozen=True)
class RoadEdge:
    """One directed road segment between two junctions."""

    sumo_id: str
    source: int
    target: int
    length_m: float
    speed_mps: float
    shape: tuple[tuple[float, float], ...]  # (lat, lon), in the direction of travel

    @property
    def free_flow_s(self) -> float:
        return self.length_m / self.speed_mps


@dataclass(frozen=True)
class RoadNetwork:
    """Junctions (index = node id) and the edges between them."""

    name: str
    node_ids: tuple[str, ...]
    node_lat: np.ndarray  # float64, one per node
    node_lon: np.ndarray
    edges: tuple[RoadEdge, ...]
    # per edge (same index), the edges a car may turn into at its end, ascending; () for none
    turns: tuple[tuple[int, ...], ...] = ()


def sumo_net_path(name: str = "DRT") -> Path:
    """A Berlin network shipped in the ``eclipse-sumo`` package (``sumo/tools/game/<name>/osm.net.xml``)."""
    spec = importlib.util.find_spec("sumo")  # the eclipse-sumo package; not imported: it sets env vars
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the eclipse-sumo package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "tools" / "game" / name / "osm.net.xml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in this eclipse-sumo installation (choices: {', '.join(BERLIN_NETS)})")
    return path


def utm_to_latlon(
    easting: np.ndarray, northing: np.ndarray, zone: int, north: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse transverse Mercator on WGS84 (Snyder's series; < 1 m error within a zone)."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    x = easting - 500000.0
    y = northing if north else northing - 10_000_000.0
    mu = y / k0 / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    phi1 = (
        mu
        + (3 * e1 / 2 - 27 * e1**3 / 32) * np.sin(2 * mu)
        + (21 * e1**2 / 16 - 55 * e1**4 / 32) * np.sin(4 * mu)
        + (151 * e1**3 / 96) * np.sin(6 * mu)
        + (1097 * e1**4 / 512) * np.sin(8 * mu)
    )
    s, c, t = np.sin(phi1), np.cos(phi1), np.tan(phi1)
    n1 = a / np.sqrt(1 - e2 * s**2)
    r1 = a * (1 - e2) / (1 - e2 * s**2) ** 1.5
    t1, c1 = t**2, ep2 * c**2
    d = x / (n1 * k0)
    lat = phi1 - (n1 * t / r1) * (
        d**2 / 2
        - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720
    )
    lon = (
        d - (1 + 2 * t1 + c1) * d**3 / 6 + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120
    ) / c
    lon0 = math.radians((zone - 1) * 6 - 180 + 3)
    return np.degrees(lat), np.degrees(lon + lon0)


def _car_allowed(lane: ET.Element) -> bool:
    allow, disallow = lane.get("allow"), lane.get("disallow")
    if allow is not None:
        return CAR in allow.split() or allow == "all"
    return disallow is None or CAR not in disallow.split()


def _points(shape: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",")[:2] for p in shape.split())]


def load(path: Path | str, name: str = "") -> RoadNetwork:
    """Parse a SUMO net: junctions, and the non-internal edges with at least one car lane."""
    offset = (0.0, 0.0)
    zone, north = 0, True
    junctions: dict[str, tuple[float, float]] = {}
    raw: list[tuple[str, str, str, float, float, list[tuple[float, float]]]] = []
    car_lanes: dict[str, set[str]] = {}  # kept edge -> the indices of its car lanes
    no_car_inner: set[str] = set()  # internal lanes cars may not use
    links: set[tuple[str, str]] = set()  # (from edge, to edge): a car may turn
    for _, el in ET.iterparse(str(path), events=("end",)):
        tag = el.tag
        if tag == "location":
            ox, oy = (float(v) for v in el.get("netOffset", "0,0").split(","))
            offset = (ox, oy)
            proj = el.get("projParameter", "")
            m = re.search(r"\+zone=(\d+)", proj)
            if "+proj=utm" not in proj or m is None:
                raise ValueError(f"{path}: only UTM-projected networks are supported (got {proj!r})")
            zone, north = int(m.group(1)), "+south" not in proj
        elif tag == "junction":
            if el.get("type") != "internal":
                junctions[el.get("id", "")] = (float(el.get("x", 0)), float(el.get("y", 0)))
            el.clear()
        elif tag == "edge":
            if el.get("function") == "internal":
                no_car_inner.update(ln.get("id", "") for ln in el.findall("lane") if not _car_allowed(ln))
            elif el.get("function") is None:
                lanes = [ln for ln in el.findall("lane") if _car_allowed(ln)]
                if lanes:
                    car_lanes[el.get("id", "")] = {ln.get("index", "") for ln in lanes}
                    shape = el.get("shape") or lanes[0].get("shape", "")
                    raw.append(
                        (
                            el.get("id", ""),
                            el.get("from", ""),
                            el.get("to", ""),
                            max(float(ln.get("length", 0)) for ln in lanes),
                            max(float(ln.get("speed", 13.89)) for ln in lanes),
                            _points(shape),
                        )
                    )
            el.clear()
        elif tag == "connection":
            src, dst = el.get("from", ""), el.get("to", "")
            if (
                el.get("fromLane") in car_lanes.get(src, ())
                and el.get("toLane") in car_lanes.get(dst, ())
                and el.get("via", "") not in no_car_inner
            ):
                links.add((src, dst))
            el.clear()
    if zone == 0:
        raise ValueError(f"{path}: no <location> with a projection")
    # only junctions that some car edge touches become nodes
    used = sorted({j for r in raw for j in (r[1], r[2])})
    index = {j: i for i, j in enumerate(used)}
    xy = np.array([junctions[j] for j in used], dtype=np.float64).reshape(-1, 2)
    node_lat, node_lon = utm_to_latlon(xy[:, 0] - offset[0], xy[:, 1] - offset[1], zone, north)
    edges = []
    for sid, src, dst, length, speed, pts in raw:
        p = np.array(pts or [junctions[src], junctions[dst]], dtype=np.float64)
        lat, lon = utm_to_latlon(p[:, 0] - offset[0], p[:, 1] - offset[1], zone, north)
        shape = tuple(zip(lat.tolist(), lon.tolist(), strict=True))
        edges.append(RoadEdge(sid, index[src], index[dst], max(length, 0.1), max(speed, 1.0), shape))
    # connections come after the edges in a .net.xml; an internal edge's id starts with ':', never kept
    edge_index = {e.sumo_id: i for i, e in enumerate(edges)}
    turns: list[list[int]] = [[] for _ in edges]
    for a, b in links:
        ia, ib = edge_index[a], edge_index[b]
        if edges[ib].source == edges[ia].target:  # a turn joins edges that meet
            turns[ia].append(ib)
    return RoadNetwork(
        name or Path(path).parent.name,
        tuple(used),
        node_lat,
        node_lon,
        tuple(edges),
        tuple(tuple(sorted(t)) for t in turns),
    )
