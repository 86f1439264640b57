"""faust's per-record path, without the steps that do nothing for our raw-bytes source topics.

A pings record (64 pings) costs the worker's main thread a few µs in faust
before the agent sees it; per py-spy, catching up at ~15k records/s:

* ``Schema.compile``'s ``decode`` (2.7 %): the key and the value each go through
  the serializer registry, the ``raw`` codec (``want_bytes``) and the model
  autodetection (``Model._maybe_reconstruct``), which all hand bytes back as
  they are; then ``App.create_event`` looks ``conf.Event`` up (``Settings``'
  ``__getattribute__``, 1.3 %). :class:`RawSchema` builds the same
  :class:`faust.Event` directly when key and value are bytes (or ``None``), as
  the consumer gives them; anything else takes faust's decode, with its errors.
* ``ProducerBuffer.wait_until_ebb`` (1 %), awaited before every record: its
  ``size`` looks ``conf.producer_threaded`` up each time. :class:`QuickEbbBuffer`
  reads the queue's length directly when the producer is not threaded.
"""

from __future__ import annotations

from typing import Any

from faust.serializers.schemas import Schema
from faust.transport.producer import ProducerBuffer
from faust.types.tuples import Message

RAW = "raw"
RAW_TYPES = (None, bytes)  # model types for which faust's decode of bytes is the identity


class RawSchema(Schema):  # type: ignore[type-arg]  # faust's generic, no parameters needed here
    """A schema whose decode makes the :class:`faust.Event` of a raw-bytes record without the registry.

    Equivalent to faust's only for ``raw`` serializers and no (or ``bytes``) model
    types; with anything else it compiles faust's decode unchanged.
    """

    def is_raw(self) -> bool:
        return (
            self.key_serializer == RAW
            and self.value_serializer == RAW
            and self.key_type in RAW_TYPES
            and self.value_type in RAW_TYPES
        )

    def compile(self, app: Any, **kwargs: Any) -> Any:
        slow = super().compile(app, **kwargs)
        if not self.is_raw():
            return slow
        event_cls = app.conf.Event  # faust's create_event looks it up per record
        default_propagate: bool = kwargs.get("default_propagate", False)
        byte_types = (bytes, type(None))

        async def decode(message: Message, *, propagate: bool = default_propagate) -> Any:
            key, value = message.key, message.value
            if key.__class__ in byte_types and value.__class__ in byte_types:
                # faust: loads_key/loads_value give back these bytes (None stays None), then create_event
                return event_cls(app, key, value, message.headers, message)
            return await slow(message, propagate=propagate)  # a str, or anything odd: faust's path and errors

        return decode


class QuickEbbBuffer(ProducerBuffer):
    """faust's producer buffer whose per-record ebb check reads no setting."""

    threaded = True  # until :func:`install_quick_ebb` knows better: faust's path

    async def wait_until_ebb(self) -> None:
        if self.threaded or len(self.pending._queue) > self.max_messages:  # type: ignore[attr-defined]
            await super().wait_until_ebb()


def install_quick_ebb(producer: Any) -> None:
    """Give a new (not yet started) faust producer a :class:`QuickEbbBuffer` in place of its buffer."""
    old = producer.buffer
    buffer = QuickEbbBuffer(loop=producer.loop, beacon=producer.beacon)
    buffer.app = old.app
    if hasattr(old, "threaded_producer"):  # faust sets it only with ``producer_threaded``
        buffer.threaded_producer = old.threaded_producer
    buffer.threaded = bool(producer.app.conf.producer_threaded)
    old.beacon.detach(producer.beacon)  # the services graph keeps the one in use only
    producer.buffer = buffer
