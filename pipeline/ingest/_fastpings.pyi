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

def cell_hinted(lat: float, lon: float, res: int, hint: int, /) -> int:
    """The ``res`` cell of the point (an int): ``hint`` confirmed without H3 when surely inside it (any is safe)."""

def cell_stats() -> tuple[int, int, int]:
    """(pings keyed by the previous ping's cell without H3, pings keyed by H3, cell shapes made), since import."""

def record_batch(
    rows: list[tuple[bytes, bytes]], timestamp_ms: int, producer_id: int, producer_epoch: int, base_sequence: int, /
) -> bytes:
    """Kafka's record batch (v2, uncompressed, no headers) of ``(key, value)`` rows, as aiokafka builds it."""

def crc32c(data: bytes | bytearray | memoryview, /, soft: bool = False) -> int:
    """CRC-32C of ``data`` as ``record_batch`` computes it (SSE4.2 where the CPU has it); ``soft``: the table path."""

def crc32c_calls() -> tuple[int, int]:
    """How many CRCs the SSE4.2 path and the table path have computed in this process."""
