"""The cheaper per-record path gives what faust's gives: the same events, the same decode errors, the same ebb waits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faust
import pytest
from faust.exceptions import KeyDecodeError, ValueDecodeError
from faust.serializers.schemas import Schema
from faust.transport.producer import ProducerBuffer
from faust.types.tuples import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from topologies.fastpath import QuickEbbBuffer, RawSchema
from topologies.flow import SourceTopic, TraverzApp


@pytest.fixture(scope="module")
def app() -> Iterator[TraverzApp]:
    yield TraverzApp("test-fastpath", broker="kafka://localhost:1", store="memory://")


def message(key: Any, value: Any, headers: Any = None, offset: int = 7) -> Message:
    return Message("traverz.pings.v1", 3, offset, 1.5, 0, headers, key, value, None)


def raw_schemas() -> tuple[Schema, RawSchema]:
    return Schema(key_serializer="raw", value_serializer="raw"), RawSchema(key_serializer="raw", value_serializer="raw")


def same_event(a: Any, b: Any) -> None:
    assert type(a) is type(b) is faust.Event
    assert a.app is b.app
    assert type(a.key) is type(b.key) and a.key == b.key
    assert type(a.value) is type(b.value) and a.value == b.value
    assert a.headers == b.headers and type(a.headers) is type(b.headers)
    assert a.message is b.message and a.acked is b.acked is False


maybe_bytes = st.none() | st.binary(max_size=64)
headers = st.none() | st.lists(st.tuples(st.text(max_size=4), st.binary(max_size=4)), max_size=3)


@settings(max_examples=200, deadline=None)
@given(key=maybe_bytes, value=maybe_bytes, hdrs=headers, allow_empty=st.booleans())
async def test_the_raw_schema_makes_faust_s_event(
    app: TraverzApp, key: bytes | None, value: bytes | None, hdrs: Any, allow_empty: bool
) -> None:
    faust_schema, raw_schema = raw_schemas()
    faust_schema.update(allow_empty=allow_empty)
    raw_schema.update(allow_empty=allow_empty)
    msg = message(key, value, hdrs)
    ours = await raw_schema.compile(app)(msg, propagate=True)
    theirs = await faust_schema.compile(app)(msg, propagate=True)
    same_event(ours, theirs)


async def test_a_str_key_or_value_takes_faust_s_path(app: TraverzApp) -> None:
    faust_schema, raw_schema = raw_schemas()
    msg = message("cell", "body")
    ours = await raw_schema.compile(app)(msg, propagate=True)
    same_event(ours, await faust_schema.compile(app)(msg, propagate=True))
    assert ours.key == b"cell" and ours.value == b"body"  # want_bytes, as faust's raw codec


class Unreadable:
    """A key or value the autodetection chokes on: faust raises a decode error for it."""

    def __getitem__(self, item: Any) -> Any:
        raise RuntimeError("unreadable")


@pytest.mark.parametrize(
    ("key", "value", "error"), [(Unreadable(), b"v", KeyDecodeError), (b"k", Unreadable(), ValueDecodeError)]
)
async def test_decode_errors_propagate_as_faust_s(app: TraverzApp, key: Any, value: Any, error: type) -> None:
    for schema in raw_schemas():
        with pytest.raises(error):
            await schema.compile(app)(message(key, value), propagate=True)


class Handlers:
    """A topic's ``on_key_decode_error`` and ``on_value_decode_error``, noting which was called."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Message]] = []

    async def on_key(self, exc: Exception, msg: Message) -> None:
        self.seen.append(("key", msg))

    async def on_value(self, exc: Exception, msg: Message) -> None:
        self.seen.append(("value", msg))


@pytest.mark.parametrize(("key", "value", "handler"), [(Unreadable(), b"v", "key"), (b"k", Unreadable(), "value")])
async def test_decode_errors_reach_the_topic_s_handlers_as_faust_s(
    app: TraverzApp, key: Any, value: Any, handler: str
) -> None:
    for schema in raw_schemas():
        handlers, msg = Handlers(), message(key, value)
        decode = schema.compile(app, on_key_decode_error=handlers.on_key, on_value_decode_error=handlers.on_value)
        assert await decode(msg) is None
        assert handlers.seen == [(handler, msg)]


async def test_other_serializers_or_models_keep_faust_s_decode(app: TraverzApp) -> None:
    class Point(faust.Record):
        x: int

    assert not RawSchema(key_serializer="raw", value_serializer="json").is_raw()
    assert not RawSchema(key_type=Point, key_serializer="raw", value_serializer="raw").is_raw()
    assert not RawSchema(value_type=Point, key_serializer="raw", value_serializer="raw").is_raw()
    assert RawSchema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw").is_raw()
    schema = RawSchema(key_serializer="raw", value_type=Point, value_serializer="json")
    assert not schema.is_raw()
    event = await schema.compile(app)(message(b"k", b'{"x": 3}'), propagate=True)
    assert event.value == Point(x=3)
    with pytest.raises(ValueDecodeError):
        await schema.compile(app)(message(b"k", b"not json"), propagate=True)


async def test_source_topics_and_their_clones_decode_with_the_raw_schema(app: TraverzApp) -> None:
    topic = SourceTopic(app, topics=["traverz.pings.v1"], key_serializer="raw", value_serializer="raw")
    assert isinstance(topic.schema, RawSchema) and topic.schema.is_raw()
    clone = topic.clone()
    assert clone.schema is topic.schema
    msg = message(b"cell", b"pings", [("h", b"1")])
    same_event(await clone.decode(msg, propagate=True), await raw_schemas()[0].compile(app)(msg, propagate=True))


async def test_a_source_topic_s_decode_error_goes_to_its_handler(app: TraverzApp) -> None:
    topic = SourceTopic(app, topics=["traverz.pings.v1"], key_serializer="raw", value_serializer="raw")
    seen: list[Exception] = []

    async def on_decode_error(exc: Exception, msg: Message) -> None:
        seen.append(exc)

    topic.on_decode_error = on_decode_error  # type: ignore[method-assign]
    topic._compile_decode()
    with pytest.raises(ValueDecodeError):
        await topic.decode(message(b"k", Unreadable()), propagate=True)
    assert await topic.decode(message(b"k", Unreadable())) is None  # faust: logged, then thrown into the queue
    assert len(seen) == 1 and isinstance(seen[0], ValueDecodeError)


async def test_the_app_s_create_event_is_faust_s(app: TraverzApp) -> None:
    msg = message(b"k", b"v", [("a", b"1")])
    theirs = faust.App.create_event(app, b"k", b"v", msg.headers, msg)
    same_event(app.create_event(b"k", b"v", msg.headers, msg), theirs)


class Flushes:
    def __init__(self) -> None:
        self.calls: list[int | None] = []

    async def __call__(self, max_messages: int | None) -> int:
        self.calls.append(max_messages)
        return 0


@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 250])
async def test_the_ebb_check_waits_exactly_when_faust_s_does(app: TraverzApp, size: int) -> None:
    waits = []
    for cls in (ProducerBuffer, QuickEbbBuffer):
        buffer = cls()
        buffer.app = app
        if isinstance(buffer, QuickEbbBuffer):
            buffer.threaded = False
        for i in range(size):
            buffer.pending.put_nowait(i)
        flushes = Flushes()
        buffer.flush_atmost = flushes  # type: ignore[method-assign]
        await buffer.wait_until_ebb()
        waits.append(flushes.calls)
    assert waits[0] == waits[1] == ([100] if size > 100 else [])


async def test_the_app_s_producer_has_the_quick_buffer(app: TraverzApp) -> None:
    producer = app.producer
    buffer = producer.buffer
    assert isinstance(buffer, QuickEbbBuffer) and buffer.threaded is False and buffer.app is app
    children = [node.data for node in producer.beacon.children]
    assert buffer in children and not any(type(c) is ProducerBuffer for c in children)


async def test_with_a_threaded_producer_the_ebb_check_is_faust_s(app: TraverzApp) -> None:
    class ThreadedQueueFull(QuickEbbBuffer):
        @property
        def size(self) -> int:  # faust's size with ``producer_threaded``: the thread's queue, not ``pending``
            return 500

    buffer = ThreadedQueueFull()
    assert buffer.threaded  # until install_quick_ebb knew the setting
    buffer.app = app
    flushes = Flushes()
    buffer.flush_atmost = flushes  # type: ignore[method-assign]
    await buffer.wait_until_ebb()
    assert flushes.calls == [100]
