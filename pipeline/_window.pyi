from collections.abc import Callable
from typing import Any

def bind(
    seq_window: type, sector_bucket: type, bucket_s: float, window_s: float, bin_per_mps: float,
    seq_bits: int, sector_width: float, /,
) -> None: ...
def add(window: Any, device: str, seq: int, ts: float, speed: float, heading: float, now: float, /) -> bool: ...
def add_pings(
    pings: list[Any], windows: dict[str, Any], load: Callable[[str, int], Any], partition: int, now: float,
    touched: set[str], wake: set[str], /,
) -> int: ...
