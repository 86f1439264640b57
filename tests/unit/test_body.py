"""pipeline.ingest.body: content type, size limits on the wire and after gzip, JSON."""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import AsyncIterator

import pytest

from pipeline.ingest.body import (
    MAX_BODY,
    MAX_INFLATED,
    BodyError,
    check_content_type,
    inflate,
    parse_json,
    read_limited,
)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


class _Counting:
    """An async chunk source that records how much of it was consumed."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self.chunk, self.count, self.pulled = chunk, count, 0

    def __aiter__(self) -> _Counting:
        return self

    async def __anext__(self) -> bytes:
        if self.pulled >= self.count:
            raise StopAsyncIteration
        self.pulled += 1
        return self.chunk


# -- content type -----------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    ["application/json", "application/json; charset=utf-8", "Application/JSON ;charset=UTF-8", " application/json"],
)
def test_json_content_types_accepted(value: str) -> None:
    check_content_type(value)


@pytest.mark.parametrize("value", [None, "", "text/plain", "application/jsonx", "multipart/form-data", "text/json"])
def test_other_content_types_are_415(value: str | None) -> None:
    with pytest.raises(BodyError) as ei:
        check_content_type(value)
    assert ei.value.status == 415
    assert ei.value.reason == "unsupported_media_type"


# -- size on the wire -------------------------------------------------------------
async def test_read_limited_joins_chunks() -> None:
    assert await read_limited(_chunks(b"ab", b"", b"cd"), None) == b"abcd"
    assert await read_limited(_chunks(), "0") == b""


async def test_read_limited_accepts_exactly_max_body() -> None:
    body = await read_limited(_chunks(b"x" * (MAX_BODY - 1), b"y"), str(MAX_BODY))
    assert len(body) == MAX_BODY


async def test_read_limited_refuses_over_max_body_early() -> None:
    src = _Counting(b"z" * 65_536, 1_000)  # 64 MiB offered
    with pytest.raises(BodyError) as ei:
        await read_limited(src, None)
    assert ei.value.status == 413
    assert ei.value.reason == "body_too_large"
    assert src.pulled == MAX_BODY // 65_536 + 1  # stopped at the first chunk past the limit


async def test_read_limited_refuses_large_declared_length_without_reading() -> None:
    src = _Counting(b"z", 10)
    with pytest.raises(BodyError) as ei:
        await read_limited(src, str(MAX_BODY + 1))
    assert ei.value.status == 413
    assert src.pulled == 0


async def test_read_limited_lying_content_length_still_limited() -> None:
    with pytest.raises(BodyError) as ei:
        await read_limited(_chunks(b"x" * (MAX_BODY + 1)), "10")
    assert ei.value.status == 413


@pytest.mark.parametrize("declared", ["abc", "1.5", ""])
async def test_read_limited_bad_content_length_is_400(declared: str) -> None:
    with pytest.raises(BodyError) as ei:
        await read_limited(_chunks(b"{}"), declared)
    assert ei.value.status == 400


# -- gzip -------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", [None, "", "identity", " Identity "])
def test_identity_passes_through(encoding: str | None) -> None:
    assert inflate(b'{"a": 1}', encoding) == b'{"a": 1}'


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", " gzip "])
def test_gzip_round_trip(encoding: str) -> None:
    data = b'[{"seq": 1}]' * 5000
    assert inflate(gzip.compress(data), encoding) == data


def test_gzip_up_to_limit_accepted() -> None:
    data = b"a" * MAX_INFLATED
    assert inflate(gzip.compress(data), "gzip") == data


def test_gzip_bomb_is_413() -> None:
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < MAX_BODY  # it passes the wire limit
    with pytest.raises(BodyError) as ei:
        inflate(bomb, "gzip")
    assert ei.value.status == 413
    assert ei.value.reason == "inflated_too_large"


def test_just_over_inflated_limit_is_413() -> None:
    with pytest.raises(BodyError) as ei:
        inflate(gzip.compress(b"a" * (MAX_INFLATED + 1)), "gzip")
    assert ei.value.status == 413


def test_truncated_gzip_is_400() -> None:
    whole = gzip.compress(b'{"seq": 1, "pad": "' + b"q" * 10_000 + b'"}')
    with pytest.raises(BodyError) as ei:
        inflate(whole[: len(whole) // 2], "gzip")
    assert (ei.value.status, ei.value.reason) == (400, "bad_gzip")


@pytest.mark.parametrize("raw", [b"not gzip at all", zlib.compress(b"{}"), b"\x1f\x8b\x08\x00garbage"])
def test_corrupt_gzip_is_400(raw: bytes) -> None:
    with pytest.raises(BodyError) as ei:
        inflate(raw, "gzip")
    assert ei.value.status == 400


@pytest.mark.parametrize("encoding", ["br", "deflate", "gzip, br", "compress"])
def test_unknown_encoding_is_415(encoding: str) -> None:
    with pytest.raises(BodyError) as ei:
        inflate(gzip.compress(b"{}"), encoding)
    assert (ei.value.status, ei.value.reason) == (415, "unsupported_encoding")


# -- JSON -------------------------------------------------------------------------
def test_parse_json() -> None:
    assert parse_json(b'[{"seq": 1, "lat": 48.8}]') == [{"seq": 1, "lat": 48.8}]


def test_parse_json_reads_non_finite_numbers_as_floats() -> None:
    # lenient phone encoders send these for a bad fix; validation then refuses that ping alone
    doc = parse_json(b'[{"lat": NaN, "lon": -Infinity, "speed_mps": 1e400}, {"lat": 1.5}]')
    assert math.isnan(doc[0]["lat"])
    assert doc[0]["lon"] == -math.inf
    assert doc[0]["speed_mps"] == math.inf
    assert doc[1] == {"lat": 1.5}


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"{'a': 1}", b"[1,]", b"\xff\xfe", b"[NaN,]", b'{"lat": NaN', b"Infinity garbage"]
)
def test_malformed_json_is_400(raw: bytes) -> None:
    with pytest.raises(BodyError) as ei:
        parse_json(raw)
    assert (ei.value.status, ei.value.reason) == (400, "malformed_json")
