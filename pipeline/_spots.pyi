from typing import Any

see_c: object  # a capsule: see's C function, for pipeline._movers

def bind(
    spot: type,
    sample_m: tuple[float, ...],
    pass_mps: float,
    same_direction_deg: float,
    ahead_lo: float,
    ahead_hi: float,
    behind_m: float,
    aside_m: float,
    m_per_deg: float,
    usual_m: float,
    usual_deg: float,
    usual_min: int,
    history_s: float,
    usual_dlat: float,
    earth_radius_m: float,
    cell_res: int,
    /,
) -> None: ...
def see(
    by_cell: dict[str, dict[str, Any]],
    cell: str,
    device: str,
    ts: float,
    lat: float,
    lon: float,
    speed: float,
    heading: float,
    /,
) -> None: ...
def usual(
    history: dict[str, list[tuple[float, float, float, float, str]]],
    disk: list[str],
    device: str,
    lat: float,
    lon: float,
    heading: float,
    since_ts: float,
    /,
) -> bool: ...
def cells(lat: float, lon: float, heading: float, /) -> tuple[str, ...]: ...
