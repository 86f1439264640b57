"""The ingest proxy: authenticated, validated, durable front door for phones.

202 means Kafka (acks=all, idempotent producer) holds every accepted ping of the
request. A client mistake is a 4xx with a machine-readable ``reason``; Kafka
trouble is a 503 with ``Retry-After`` — never an acknowledgement of data Kafka
did not take.

``POST /v1/pings`` is nearly all of the traffic, so it is a plain ASGI handler
(``IngestService.serve_pings``) that the ``FrontDoor`` calls before Starlette's
middleware and router: per request those cost more than auth, validation and the
Kafka hand-off together. Its pings go through the ``Coalescer``: concurrent requests
share Kafka records and one acknowledgement. Every other route is Starlette's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pipeline import geo, pings
from pipeline.ingest.accept import sort_pings
from pipeline.ingest.body import (
    BodyError,
    Disconnected,
    check_content_type,
    inflate,
    parse_json,
    read_limited,
    receive_limited,
)
from pipeline.ingest.coalesce import Coalescer, KafkaUnavailable
from pipeline.ingest.generation import GenerationFollower, Topics, fetch_metadata
from pipeline.ingest.lanes import ProducerLanes
from pipeline.ingest.openapi import OPENAPI
from pipeline.metrics import LATENCY_BUCKETS, SIZE_BUCKETS, Registry
from pipeline.ratelimit import TokenBuckets
from pipeline.settings import Settings
from pipeline.tokens import DeviceIdentity, TokenError, TokenVerifier, bearer, parse_keys

REPORT_TYPES = frozenset({"crash", "road_work", "stalled_vehicle", "hazard", "closure"})
VOTES = frozenset({"still_there", "not_there"})
MAX_TEXT = 280
# How long a flush waits for more requests (and, under load, until the previous flush is
# acknowledged): a few ms cost little next to the ack, and make the records per flush few.
LINGER_S = 0.002
# Producers (connections) whose flushes may await their acks at once: aiokafka has one produce
# request per broker in flight per producer, so with one a flush also waits for the one before.
PRODUCER_LANES = 2

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

class Sink(Protocol):
    """Where accepted records go: Kafka in production, a list in unit tests."""

    async def send_all(
        self, topic: str, records: list[tuple[bytes, bytes]], timeout: float, partitions: list[int] | None = None
    ) -> None:
        """Produce ``records``; ``partitions`` (one per record) when the caller placed them already."""
        ...

    async def healthy(self) -> bool: ...

    def partitions(self, topic: str) -> int | None:
        """How many partitions ``topic`` has now; None while that is not known."""
        ...


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (``gzip;q=0`` refuses it)."""
    for item in accept_encoding.lower().split(","):
        name, _, params = item.partition(";")
        if name.strip() != "gzip":
            continue
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def encode_json(doc: Any, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
    """The body of a JSON answer and the headers that its encoding needs."""
    body = orjson.dumps(doc)
    hdrs: dict[str, str] = {}
    if len(body) >= 512:  # smaller answers are not worth compressing
        hdrs["vary"] = "accept-encoding"
        if accepts_gzip(accept_encoding):
            body = gzip.compress(body, 5)
            hdrs["content-encoding"] = "gzip"
    return body, hdrs


def retry_after(seconds: float) -> str:
    return str(max(1, int(seconds + 0.999)))


def json_response(request: Request, status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
    body, hdrs = encode_json(doc, request.headers.get("accept-encoding", ""))
    return Response(body, status_code=status, media_type="application/json", headers={**(headers or {}), **hdrs})


def error(request: Request, status: int, reason: str, detail: str = "", **extra: Any) -> Response:
    headers = {}
    if "retry_after" in extra:
        headers["retry-after"] = retry_after(extra.pop("retry_after"))
    return json_response(request, status, {"error": reason, "detail": detail, **extra}, headers)


_JSON_HEADERS = ((b"content-type", b"application/json"),)
_WANTED = frozenset({b"authorization", b"content-type", b"content-length", b"content-encoding", b"accept-encoding"})


def _first_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The request headers the pings route reads, first occurrence wins (as in Starlette's ``Headers.get``)."""
    out: dict[bytes, str] = {}
    for name, value in raw:
        if name in _WANTED and name not in out:
            out[name] = value.decode("latin-1")
    return out


class IngestService:
    """Handlers around the pure validation; one per process."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        clock: Callable[[], float] = time.time,
        topics: Topics | None = None,
        in_flight: int = 1,
    ) -> None:
        self.s = settings
        self.topics = topics or Topics.of(settings)  # switched live to a new generation (GenerationFollower)
        self.sink = sink
        self.clock = clock
        self.verifier = TokenVerifier(
            parse_keys(settings.token_kid, settings.token_secret, settings.token_extra_keys),
            issuer=settings.token_issuer,
            audience=settings.token_audience,
        )
        self.limits = TokenBuckets(settings.ingest_rate, settings.ingest_burst)
        m = self.metrics = Registry()
        self.requests = m.counter("traverz_ingest_requests_total", "requests by route and status")
        self.accepted = m.counter("traverz_ingest_pings_accepted_total", "pings acknowledged")
        self.rejected = m.counter("traverz_ingest_pings_rejected_total", "pings refused, by reason")
        self.produce_latency = m.histogram(
            "traverz_ingest_produce_seconds", "time until Kafka acked a request", LATENCY_BUCKETS
        )
        self.batch_sizes = m.histogram("traverz_ingest_batch_pings", "pings per request", SIZE_BUCKETS)
        self.coalescer = Coalescer(
            lambda records, timeout, parts: sink.send_all(self.topics.pings, records, timeout, parts),
            lambda: sink.partitions(self.topics.pings),
            key_res=settings.key_resolution,
            cell_res=settings.cell_resolution,
            linger_s=LINGER_S,
            timeout_s=settings.ingest_produce_timeout,
            max_in_flight=in_flight,  # one flush awaiting its ack per producer lane
            clock=clock,
        )
        self._status_series: dict[int, tuple[tuple[str, str], ...]] = {}
        self._accepted_answers: dict[int, tuple[list[tuple[bytes, bytes]], bytes]] = {}
        c = self.coalescer
        m.counter("traverz_ingest_flushes_total", "coalesced produce calls for pings", lambda: c.flushes)
        m.counter("traverz_ingest_records_total", "Kafka records the pings went out in", lambda: c.records)
        m.gauge("traverz_ingest_generation", "generation of the topics produced to", lambda: self.topics.generation)

    # -- shared steps ---------------------------------------------------------
    def _auth(self, request: Request) -> DeviceIdentity:
        return self.verifier.verify(bearer(request.headers.get("authorization")), self.clock())

    async def _body(self, request: Request) -> Any:
        check_content_type(request.headers.get("content-type"))
        raw = await read_limited(request.stream(), request.headers.get("content-length"))
        return parse_json(inflate(raw, request.headers.get("content-encoding")))

    async def _produce(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        t0 = time.perf_counter()
        await self.sink.send_all(topic, records, self.s.ingest_produce_timeout)
        self.produce_latency.observe(time.perf_counter() - t0)

    async def guarded(
        self, request: Request, route: str, handler: Callable[[Request, DeviceIdentity], Awaitable[Response]]
    ) -> Response:
        """Auth, rate limit and error mapping common to every device route."""
        try:
            ident = self._auth(request)
        except TokenError as exc:
            resp = error(request, 401, "unauthorized", str(exc))
        else:
            wait = self.limits.take(ident.device_id, self.clock())
            if wait > 0:
                resp = error(request, 429, "rate_limited", "slow down", retry_after=wait)
            else:
                try:
                    resp = await handler(request, ident)
                except BodyError as exc:
                    resp = error(request, exc.status, exc.reason, exc.detail)
                except (TimeoutError, KafkaUnavailable) as exc:
                    resp = error(request, 503, "kafka_unavailable", str(exc) or "retry", retry_after=1)
        self.requests.inc(route=route, status=str(resp.status_code))
        return resp

    # -- POST /v1/pings: plain ASGI ------------------------------------------------
    async def serve_pings(self, scope: Scope, receive: Receive, send: Send) -> None:
        """What ``guarded`` + a pings handler would do, without Request/Response objects."""
        headers = _first_headers(scope["headers"])
        extra: dict[str, str] = {}
        doc: dict[str, Any]
        now = self.clock()  # one reading per request: auth, rate limit and the pings' time bounds
        try:
            ident = self.verifier.verify(bearer(headers.get(b"authorization")), now)
        except TokenError as exc:
            status, doc = 401, {"error": "unauthorized", "detail": str(exc)}
        else:
            wait = self.limits.take(ident.device_id, now)
            if wait > 0:
                status, doc = 429, {"error": "rate_limited", "detail": "slow down"}
                extra["retry-after"] = retry_after(wait)
            else:
                try:
                    status, doc = await self._accept_pings(headers, receive, ident, now)
                except BodyError as exc:
                    status, doc = exc.status, {"error": exc.reason, "detail": exc.detail}
                except (TimeoutError, KafkaUnavailable) as exc:
                    status, doc = 503, {"error": "kafka_unavailable", "detail": str(exc) or "retry"}
                    extra["retry-after"] = "1"
                except Disconnected:
                    return  # nobody left to answer
        series = self._status_series.get(status)
        if series is None:
            series = self._status_series[status] = self.requests.series(route="pings", status=str(status))
        self.requests.inc_series(series)
        if status == 202 and not doc["rejected"]:
            out, body = self._accepted_answer(doc["accepted"])
        else:
            body, enc = encode_json(doc, headers.get(b"accept-encoding", ""))
            out = [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]
            for name, value in (*extra.items(), *enc.items()):
                out.append((name.encode(), value.encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    def _accepted_answer(self, accepted: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers and body of ``202 {"accepted": n, "rejected": []}``, built once per ``n``.

        Nearly every answer is one of these, and all of them are under the gzip threshold.
        """
        hit = self._accepted_answers.get(accepted)
        if hit is None:
            body = orjson.dumps({"accepted": accepted, "rejected": []})
            headers = [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]
            hit = self._accepted_answers[accepted] = (headers, body)
        return hit

    async def _accept_pings(
        self, headers: dict[bytes, str], receive: Receive, ident: DeviceIdentity, now: float
    ) -> tuple[int, dict[str, Any]]:
        check_content_type(headers.get(b"content-type"))
        raw = await receive_limited(receive, headers.get(b"content-length"))
        doc = parse_json(inflate(raw, headers.get(b"content-encoding")))
        items = doc if isinstance(doc, list) else [doc]
        if isinstance(doc, list) and not doc:
            raise BodyError(400, "empty_batch", "send at least one ping")
        if len(items) > pings.MAX_BATCH:
            raise BodyError(413, "batch_too_large", f"at most {pings.MAX_BATCH} pings per request")
        good, refused, foreign = sort_pings(items, ident.device_id, now)
        if foreign is not None:
            return 403, {"error": "forbidden", "detail": "a ping names another device", "index": foreign}
        bad = [{"index": i, "reason": reason} for i, reason in refused]
        for _, reason in refused:
            self.rejected.inc(reason=reason.split(":", 1)[0])
        self.batch_sizes.observe(len(items))
        if not good:
            return 400, {"error": "invalid_pings", "accepted": 0, "rejected": bad}
        t0 = time.perf_counter()
        await self.coalescer.submit(good)
        self.produce_latency.observe(time.perf_counter() - t0)
        self.accepted.inc_series((), len(good))
        return 202, {"accepted": len(good), "rejected": bad}

    # -- the other routes (Starlette) --------------------------------------------------
    async def post_report(self, request: Request, ident: DeviceIdentity) -> Response:
        doc = await self._body(request)
        if not isinstance(doc, dict):
            raise BodyError(400, "invalid_report", "a report is an object")
        reason = _report_problem(doc, self.clock())
        if reason:
            raise BodyError(400, "invalid_report", reason)
        # keyed like the pings of that spot: the key-resolution parent of its condition cell
        key = geo.key_cell(doc["lat"], doc["lon"], self.s.key_resolution, self.s.cell_resolution)
        report_id = f"r-{key}-{uuid.uuid4().hex[:16]}"
        record = {
            "v": 1,
            "kind": "report",
            "id": report_id,
            "device_id": ident.device_id,
            "type": doc["type"],
            "lat": float(doc["lat"]),
            "lon": float(doc["lon"]),
            "heading_deg": float(doc["heading_deg"]) % 360.0,
            "ts": float(doc["ts"]),
            "ingest_ts": self.clock(),
        }
        if doc.get("text"):
            record["text"] = doc["text"]
        await self._produce(self.topics.reports, [(key.encode(), orjson.dumps(record))])
        return json_response(request, 202, {"id": report_id})

    async def post_vote(self, request: Request, ident: DeviceIdentity) -> Response:
        report_id = request.path_params["report_id"]
        key = _report_key(report_id, self.s.key_resolution)
        if key is None:
            return error(request, 404, "unknown_report", "not a report id")
        doc = await self._body(request)
        vote = doc.get("vote") if isinstance(doc, dict) else None
        if not isinstance(vote, str) or vote not in VOTES:
            raise BodyError(400, "invalid_vote", "vote must be still_there or not_there")
        now = self.clock()
        record = {
            "v": 1,
            "kind": "vote",
            "report_id": report_id,
            "device_id": ident.device_id,
            "vote": doc["vote"],
            "ts": now,
            "ingest_ts": now,
        }
        await self._produce(self.topics.reports, [(key.encode(), orjson.dumps(record))])
        return json_response(request, 202, {"report_id": report_id, "vote": doc["vote"]})


def _num(v: Any) -> bool:
    import math

    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _report_problem(doc: dict[str, Any], now: float) -> str:
    kind = doc.get("type")
    if not isinstance(kind, str) or kind not in REPORT_TYPES:
        return "type: must be one of " + ", ".join(sorted(REPORT_TYPES))
    for name in ("lat", "lon", "heading_deg", "ts"):
        if not _num(doc.get(name)):
            return f"{name}: must be a finite number"
    if not -90 <= doc["lat"] <= 90 or not -180 <= doc["lon"] <= 180:
        return "lat/lon: out of range"
    if not 0 <= doc["heading_deg"] <= 360:
        return "heading_deg: out of range 0..360"
    if not now - pings.MAX_AGE_S <= doc["ts"] <= now + pings.MAX_FUTURE_S:
        return "ts: out of range"
    text = doc.get("text")
    if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
        return f"text: a string of at most {MAX_TEXT} characters"
    return ""


_REPORT_ID = re.compile(r"r-([0-9a-f]{15})-[0-9a-f]{16}")


def _report_key(report_id: str, res: int = 7) -> str | None:
    """The Kafka key (the res-``res`` cell) of a report id as ``post_report`` makes them, else None.

    A vote must land in the partition of its report: an id naming a cell of another
    resolution (or an upper-case spelling of the cell) would key it elsewhere.
    """
    m = _REPORT_ID.fullmatch(report_id)
    if m is None or not geo.is_cell(m[1]) or geo.cell_resolution(m[1]) != res:
        return None
    return m[1]


class KafkaSink:
    """Produces through the durable (acks=all, idempotent) aiokafka producer, and keeps one working.

    ``factory`` makes a producer (not started). The sink connects in the background, so the
    proxy serves — 503 for data, 200 on ``/healthz`` — while Kafka is away, and answers 503 at
    once instead of after the produce timeout while it has no producer. A producer whose
    sender task died is replaced: after a fatal error (``OutOfOrderSequenceNumber``,
    ``ProducerFenced``, an unexpected sender error) aiokafka fails every later send and
    never recovers by itself; a new producer gets a new producer id and starts clean.
    """

    def __init__(self, factory: Callable[[], Any], retry_delay: float = 0.5, topics: tuple[str, ...] = ()) -> None:
        self._factory = factory
        self._retry_delay = retry_delay
        self._topics = topics  # whose metadata to fetch on connecting: the first flush then groups by partition
        self.producer: Any = None
        self._connecting: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.replaced = 0

    async def start(self, wait: float = 5.0) -> None:
        """Begin connecting; wait up to ``wait`` s for the first producer (it goes on after)."""
        task = self._connect_soon()
        with contextlib.suppress(TimeoutError, KafkaUnavailable):
            await asyncio.wait_for(asyncio.shield(task), wait)

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush what is pending (for at most ``timeout`` s) and close."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self.producer is not None:
            self._retire(self.producer, timeout)
            self.producer = None
        if self._closing:
            await asyncio.wait(set(self._closing))

    def _connect_soon(self) -> asyncio.Task[None]:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect())
        return self._connecting

    async def _connect(self) -> None:
        delay = self._retry_delay
        while True:
            producer = self._factory()
            try:
                await producer.start()
            except asyncio.CancelledError:  # shutting down while Kafka is away
                self._retire(producer, 1.0)
                raise
            except Exception:
                self._retire(producer, 1.0)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.producer = producer
            for topic in self._topics:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.partitions_for(topic), 2.0)
            return

    def _retire(self, producer: Any, timeout: float) -> None:
        async def close() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout)

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _usable(self) -> Any:
        """The current producer, or KafkaUnavailable (and a reconnect) when there is none."""
        producer = self.producer
        if producer is not None:
            sender = getattr(producer, "_sender", None)
            task = getattr(sender, "sender_task", None)
            if task is None or not task.done():
                return producer
            # the sender died: this producer will never deliver again
            self.producer = None
            self.replaced += 1
            self._retire(producer, 1.0)
        self._connect_soon()
        raise KafkaUnavailable("no Kafka producer (connecting)")

    async def send_all(
        self, topic: str, records: list[tuple[bytes, bytes]], timeout: float, partitions: list[int] | None = None
    ) -> None:
        producer = self._usable()

        async def send() -> None:
            if partitions is None:
                futs = [await producer.send(topic, value, key=key) for key, value in records]
            else:
                futs = await _send_batches(producer, topic, records, partitions)
            await asyncio.gather(*futs)

        try:
            await asyncio.wait_for(send(), timeout)
        except TimeoutError as exc:
            raise KafkaUnavailable("Kafka did not acknowledge in time") from exc
        except Exception as exc:  # aiokafka errors: broker gone, not leader, a fatal sender error
            with contextlib.suppress(KafkaUnavailable):
                self._usable()  # replaces the producer if this was fatal
            raise KafkaUnavailable(type(exc).__name__) from exc

    def partitions(self, topic: str) -> int | None:
        producer = self.producer
        if producer is None:
            return None
        known = producer.client.cluster.partitions_for_topic(topic)
        return len(known) if known else None

    async def healthy(self) -> bool:
        try:
            producer = self._usable()
            await asyncio.wait_for(producer.client.fetch_all_metadata(), 1.0)
            return True
        except Exception:
            return False


async def _send_batches(
    producer: Any, topic: str, records: list[tuple[bytes, bytes]], partitions: list[int]
) -> list[asyncio.Future[Any]]:
    """One aiokafka batch per partition (``create_batch``/``send_batch``), as ``topologies/state.py`` does.

    ``producer.send`` per record costs a partitioner call (murmur2 in pure Python), a future and
    an accumulator pass per record; the coalescer already knows each record's partition. The
    batches still go through the idempotent producer's accumulator, which numbers them.
    """
    by_part: dict[int, list[tuple[bytes, bytes]]] = {}
    for record, part in zip(records, partitions, strict=True):
        by_part.setdefault(part, []).append(record)
    futs: list[asyncio.Future[Any]] = []
    for part, rows in by_part.items():
        batch = producer.create_batch()
        for key, value in rows:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futs.append(await producer.send_batch(batch, topic, partition=part))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record of {len(value)} bytes exceeds the producer's batch size")
        futs.append(await producer.send_batch(batch, topic, partition=part))
    return futs


def _settle_heap() -> None:
    """Move what startup built out of the cyclic GC's reach (measured: 15 % of batch CPU was GC).

    A batch request allocates ~100 dicts and a few lists; every 700 container allocations run
    a young collection, and now and then a full one walks every object of the process —
    modules, Starlette, aiokafka, the OpenAPI document. Frozen, those are never walked again;
    the requests' own objects are still collected as before.
    """
    gc.collect()
    gc.freeze()


class PingsEndpoint:
    """``POST /v1/pings`` as an ASGI app (a class, so Starlette's Route mounts it as one)."""

    def __init__(self, holder: dict[str, IngestService]) -> None:
        self.holder = holder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.holder["svc"].serve_pings(scope, receive, send)


class FrontDoor:
    """Hands ``POST /v1/pings`` to its handler directly, everything else to the Starlette app.

    The same handler is mounted in the Starlette router too, so a request this shortcut does
    not recognise (a ``root_path``, say) is still served the same way, just slower.
    """

    def __init__(self, app: Starlette, pings_endpoint: PingsEndpoint) -> None:
        self.app = app
        self.pings_endpoint = pings_endpoint

    @property
    def routes(self) -> list[BaseRoute]:
        return self.app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/v1/pings"
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            await self.pings_endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def build_app(settings: Settings, sink: Sink | None = None) -> FrontDoor:
    """The ASGI app; without ``sink`` it owns a Kafka producer for its lifetime."""
    holder: dict[str, IngestService] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sink is not None:
            service = holder["svc"] = IngestService(settings, sink)
            try:
                yield
            finally:
                await service.coalescer.drain()
            return
        from pipeline.kafka_io import durable_producer

        # the proxy starts (and stays up, answering 503) while Kafka is away; the coalescer
        # already lingers, so the producer need not linger as well
        kafka = ProducerLanes([
            KafkaSink(lambda: durable_producer(settings, linger_ms=0), topics=(settings.pings_topic,))
            for _ in range(PRODUCER_LANES)
        ])
        await kafka.start(wait=3.0)
        service = holder["svc"] = IngestService(settings, kafka, in_flight=PRODUCER_LANES)
        follower = GenerationFollower(settings, service.topics, lambda topic: fetch_metadata(kafka.producer, topic))
        await follower.start()  # the newest generation before the first request (traverz topics rescale)
        _settle_heap()
        try:
            yield
        finally:
            await service.coalescer.drain()
            await follower.stop()
            await kafka.stop()

    def svc() -> IngestService:
        return holder["svc"]

    async def reports_route(request: Request) -> Response:
        return await svc().guarded(request, "reports", svc().post_report)

    async def votes_route(request: Request) -> Response:
        return await svc().guarded(request, "votes", svc().post_vote)

    async def healthz(request: Request) -> Response:
        return json_response(request, 200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        ok = await svc().sink.healthy()
        return json_response(request, 200 if ok else 503, {"ready": ok})

    async def metrics(request: Request) -> Response:
        return Response(svc().metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(request: Request) -> Response:
        return json_response(request, 200, OPENAPI)

    async def http_error(request: Request, exc: Exception) -> Response:
        """Unknown paths and methods answer in JSON too, like every other refusal."""
        assert isinstance(exc, HTTPException)
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return json_response(request, exc.status_code, {"error": reason, "detail": exc.detail}, dict(exc.headers or {}))

    pings_endpoint = PingsEndpoint(holder)
    app = Starlette(
        exception_handlers={HTTPException: http_error},
        routes=[
            Route("/v1/pings", pings_endpoint, methods=["POST"]),
            Route("/v1/reports", reports_route, methods=["POST"]),
            Route("/v1/reports/{report_id}/votes", votes_route, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/openapi.json", openapi),
        ],
        lifespan=lifespan,
    )
    return FrontDoor(app, pings_endpoint)
