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
