"""CRC-32C in ``_fastpings`` (pipeline/ingest/_batchwire.c): the SSE4.2 path and the software table path.

Record batches take the SSE4.2 path wherever the CPU has it, so the table path (``crc32c_soft``,
what a CPU without SSE4.2 runs) is only reached here, through ``crc32c(data, soft=True)``. Both
are held to a bitwise reference written from the definition (reflected polynomial 0x82F63B78,
initial and final XOR 0xFFFFFFFF). The SSE4.2 path takes 8 bytes at a time and then a byte-wise
tail, so every length's tail (0-7 bytes) and every start address alignment are covered.
"""

from __future__ import annotations

import random

import pytest
from aiokafka.record.util import calc_crc32c
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest._fastpings import crc32c, crc32c_calls, record_batch

POLY = 0x82F63B78  # Castagnoli, reflected
CHECK = 0xE3069283  # CRC-32C of b"123456789" (the catalogue's check value)
BATCH_CRC_AT, BATCH_ATTRS_AT = 17, 21  # the v2 batch's CRC field, and where the bytes it covers begin


def step(crc: int, byte: int) -> int:
    """One byte into a running (pre-inverted) CRC register, bit by bit."""
    crc ^= byte
    for _ in range(8):
        crc = (crc >> 1) ^ (POLY if crc & 1 else 0)
    return crc


def reference(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = step(crc, byte)
    return crc ^ 0xFFFFFFFF


def test_the_reference_gives_the_check_value() -> None:
    assert reference(b"123456789") == CHECK
    assert reference(b"") == 0


@pytest.mark.parametrize("soft", [False, True])
def test_the_check_value_and_empty_input(soft: bool) -> None:
    assert crc32c(b"123456789", soft=soft) == CHECK
    assert crc32c(b"", soft=soft) == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [  # RFC 3720 (iSCSI) appendix B.4
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
    ],
)
@pytest.mark.parametrize("soft", [False, True])
def test_the_iscsi_vectors(data: bytes, expected: int, soft: bool) -> None:
    assert crc32c(data, soft=soft) == expected


def test_every_length_and_alignment_up_to_300_bytes_on_both_paths() -> None:
    """Each start offset 0-7 (through a memoryview, so the pointer is unaligned) and each length 0-300."""
    buf = random.Random(32).randbytes(308)
    view = memoryview(buf)
    for start in range(8):
        crc = 0xFFFFFFFF  # the reference over buf[start:start + n] for every n, in one pass
        for n in range(301):
            want = crc ^ 0xFFFFFFFF
            chunk = view[start : start + n]
            assert (crc32c(chunk), crc32c(chunk, soft=True)) == (want, want), (start, n)
            if n < 300:
                crc = step(crc, buf[start + n])


@given(st.binary(min_size=0, max_size=300))
def test_both_paths_equal_the_bitwise_reference(data: bytes) -> None:
    want = reference(data)
    assert crc32c(data) == want
    assert crc32c(data, True) == want


def test_both_paths_agree_on_a_megabyte() -> None:
    data = random.Random(1).randbytes((1 << 20) + 5)
    assert crc32c(data) == crc32c(data, soft=True) == calc_crc32c(data)


def test_a_record_batch_carries_the_crc_the_soft_path_computes() -> None:
    """What a CPU without SSE4.2 would write into the batch: the table path over the same bytes."""
    rng = random.Random(17)
    for n in (1, 2, 7, 40):
        rows = [(rng.randbytes(rng.randrange(16)), rng.randbytes(rng.randrange(1, 400))) for _ in range(n)]
        batch = record_batch(rows, 1_700_000_000_123, 2**40 + 7, 3, 2**31 - 9)
        carried = int.from_bytes(batch[BATCH_CRC_AT:BATCH_ATTRS_AT], "big")
        covered = batch[BATCH_ATTRS_AT:]
        assert carried == crc32c(covered, soft=True) == reference(covered) == calc_crc32c(covered)


def test_only_a_bytes_like_object_is_taken() -> None:
    with pytest.raises(TypeError):
        crc32c("123456789")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        crc32c(data=b"123456789")  # type: ignore[call-arg]
    assert crc32c(bytearray(b"123456789"), soft=True) == CHECK


def test_soft_takes_the_table_path_and_batches_the_path_the_cpu_has() -> None:
    # without this the tests above would pass with ``soft`` ignored: both paths give the same CRC
    hw, table = crc32c_calls()
    crc32c(b"123456789", soft=True)
    assert crc32c_calls() == (hw, table + 1)
    record_batch([(b"k", b"v")], 0, -1, -1, -1)
    after = crc32c_calls()
    # one more CRC, through SSE4.2 where this CPU has it (x86-64 servers do), else the table
    assert after[0] + after[1] == hw + table + 2 and after[1] in (table + 1, table + 2)
    if after[0] == hw + 1:
        crc32c(b"123456789")
        assert crc32c_calls() == (hw + 2, table + 1)
