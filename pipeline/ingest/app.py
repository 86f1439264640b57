"""The ingest proxy: authenticated, validated, durable front door for phones.

202 means Kafka (acks=all, idempotent producer) holds every accepted ping of the
request. A client mistake is a 4xx with a machine-readable ``reason``; Kafka
trouble is a 503 with ``Retry-After`` — never an acknowledgement of data Kafka
did not take.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline import geo, pings
from pipeline.ingest.body import BodyError, check_content_type, inflate, parse_json, read_limited
from pipeline.ingest.openapi import OPENAPI
from pipeline.metrics import LATENCY_BUCKETS, SIZE_BUCKETS, Registry
from pipeline.ratelimit import TokenBuckets
from pipeline.settings import TOPIC_PINGS, TOPIC_REPORTS, Settings
from pipeline.tokens import DeviceIdentity, TokenError, TokenVerifier, bearer, parse_keys

REPORT_TYPES = frozenset({"crash", "road_work", "stalled_vehicle", "hazard", "closure"})
VOTES = frozenset({"still_there", "not_there"})
MAX_TEXT = 280


class Sink(Protocol):
    """Where accepted records go: Kafka in production, a list in unit tests."""

    async def send_all(self, topic: str, records: list[tuple[bytes, bytes]], timeout: float) -> None: ...

    async def healthy(self) -> bool: ...


def json_response(request: Request, status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(doc)
    hdrs = dict(headers or {})
    if len(body) >= 512 and "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(body, 5)
        hdrs["content-encoding"] = "gzip"
        hdrs["vary"] = "accept-encoding"
    return Response(body, status_code=status, media_type="application/json", headers=hdrs)


def error(request: Request, status: int, reason: str, detail: str = "", **extra: Any) -> Response:
    headers = {}
    if "retry_after" in extra:
        headers["retry-after"] = str(max(1, int(extra.pop("retry_after") + 0.999)))
    return json_response(request, status, {"error": reason, "detail": detail, **extra}, headers)


class IngestService:
    """Handlers around the pure validation; one per process."""

    def __init__(self, settings: Settings, sink: Sink, clock: Callable[[], float] = time.time) -> None:
        self.s = settings
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

    # -- routes -----------------------------------------------------------------
    async def post_pings(self, request: Request, ident: DeviceIdentity) -> Response:
        doc = await self._body(request)
        items = doc if isinstance(doc, list) else [doc]
        if isinstance(doc, list) and not doc:
            raise BodyError(400, "empty_batch", "send at least one ping")
        if len(items) > pings.MAX_BATCH:
            raise BodyError(413, "batch_too_large", f"at most {pings.MAX_BATCH} pings per request")
        now = self.clock()
        good: list[pings.Ping] = []
        bad: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            if isinstance(item, dict) and "device_id" in item and item["device_id"] != ident.device_id:
                return error(request, 403, "forbidden", "a ping names another device", index=i)
            result = pings.validate_ping(item, ident.device_id, now)
            if isinstance(result, str):
                bad.append({"index": i, "reason": result})
                self.rejected.inc(reason=result.split(":", 1)[0])
            else:
                good.append(result)
        self.batch_sizes.observe(len(items))
        if not good:
            return json_response(request, 400, {"error": "invalid_pings", "accepted": 0, "rejected": bad})
        ingest_ts = self.clock()
        records = [
            (key.encode(), pings.encode_record(key, chunk, ingest_ts))
            for key, chunk in pings.group_by_key(good, self.s.key_resolution).items()
        ]
        await self._produce(TOPIC_PINGS, records)
        self.accepted.inc(len(good))
        return json_response(request, 202, {"accepted": len(good), "rejected": bad})

    async def post_report(self, request: Request, ident: DeviceIdentity) -> Response:
        doc = await self._body(request)
        if not isinstance(doc, dict):
            raise BodyError(400, "invalid_report", "a report is an object")
        reason = _report_problem(doc, self.clock())
        if reason:
            raise BodyError(400, "invalid_report", reason)
        key = geo.cell(doc["lat"], doc["lon"], self.s.key_resolution)
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
        await self._produce(TOPIC_REPORTS, [(key.encode(), orjson.dumps(record))])
        return json_response(request, 202, {"id": report_id})

    async def post_vote(self, request: Request, ident: DeviceIdentity) -> Response:
        report_id = request.path_params["report_id"]
        key = _report_key(report_id)
        if key is None:
            return error(request, 404, "unknown_report", "not a report id")
        doc = await self._body(request)
        if not isinstance(doc, dict) or doc.get("vote") not in VOTES:
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
        await self._produce(TOPIC_REPORTS, [(key.encode(), orjson.dumps(record))])
        return json_response(request, 202, {"report_id": report_id, "vote": doc["vote"]})


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge in time."""


def _num(v: Any) -> bool:
    import math

    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _report_problem(doc: dict[str, Any], now: float) -> str:
    if doc.get("type") not in REPORT_TYPES:
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


def _report_key(report_id: str) -> str | None:
    parts = report_id.split("-")
    if len(parts) != 3 or parts[0] != "r" or not geo.is_cell(parts[1]):
        return None
    return parts[1]


class KafkaSink:
    """Produces through the durable (acks=all, idempotent) aiokafka producer."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer

    async def send_all(self, topic: str, records: list[tuple[bytes, bytes]], timeout: float) -> None:
        async def send() -> None:
            futs = [await self.producer.send(topic, value, key=key) for key, value in records]
            await asyncio.gather(*futs)

        try:
            await asyncio.wait_for(send(), timeout)
        except TimeoutError as exc:
            raise KafkaUnavailable("Kafka did not acknowledge in time") from exc
        except Exception as exc:  # aiokafka errors: broker gone, not leader, ...
            raise KafkaUnavailable(type(exc).__name__) from exc

    async def healthy(self) -> bool:
        try:
            await asyncio.wait_for(self.producer.client.fetch_all_metadata(), 1.0)
            return True
        except Exception:
            return False


def build_app(settings: Settings, sink: Sink | None = None) -> Starlette:
    """The ASGI app; without ``sink`` it owns a Kafka producer for its lifetime."""
    holder: dict[str, IngestService] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sink is not None:
            holder["svc"] = IngestService(settings, sink)
            yield
            return
        from pipeline.kafka_io import durable_producer

        producer = durable_producer(settings)
        # keep trying: the proxy starts (and stays up) while Kafka is away
        while True:
            try:
                await producer.start()
                break
            except Exception:
                await asyncio.sleep(1.0)
        holder["svc"] = IngestService(settings, KafkaSink(producer))
        try:
            yield
        finally:
            await producer.stop()

    def svc() -> IngestService:
        return holder["svc"]

    async def pings_route(request: Request) -> Response:
        return await svc().guarded(request, "pings", svc().post_pings)

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

    return Starlette(
        routes=[
            Route("/v1/pings", pings_route, methods=["POST"]),
            Route("/v1/reports", reports_route, methods=["POST"]),
            Route("/v1/reports/{report_id}/votes", votes_route, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/openapi.json", openapi),
        ],
        lifespan=lifespan,
    )
