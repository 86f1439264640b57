def scan(
    body: bytes,
    device_json: bytes,
    ts_lo: float,
    ts_hi: float,
    cell_res: int,
    key_res: int,
    max_pings: int,
    max_batch: int,
    /,
) -> tuple[int, list[tuple[int, int, bytes]]] | None: ...

def cell_stats() -> tuple[int, int, int]:
    """(pings keyed by the previous ping's cell without H3, pings keyed by H3, cell shapes made), since import."""
