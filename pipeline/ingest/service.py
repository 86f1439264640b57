"""The ingest proxy's state and its Starlette routes: auth, rate limits, metrics, reports, votes.

``POST /v1/pings`` — nearly all of the traffic — is served by ``pings_route.PingsRoute``
on the same state, as a plain ASGI handler.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from pipeline import geo
from pipeline.ingest.body import BodyError, check_content_type, inflate, parse_json, read_limited
from pipeline.ingest.coalesce import Coalescer, KafkaUnavailable
from pipeline.ingest.generation import Topics
from pipeline.ingest.reports import VOTES, report_key, report_problem
from pipeline.ingest.responses import error, json_response
from pipeline.ingest.sink import Sink
from pipeline.metrics import LATENCY_BUCKETS, SIZE_BUCKETS, Registry
from pipeline.ratelimit import TokenBuckets
from pipeline.settings import Settings
from pipeline.tokens import DeviceIdentity, TokenError, TokenVerifier, bearer, parse_keys

# How long a flush waits for more requests (and, under load, until the previous flush is
# acknowledged): a few ms cost little next to the ack, and make the records per flush few.
LINGER_S = 0.002


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
            on_acked=self._pings_acked,
        )
        self._pings_202 = self.requests.series(route="pings", status="202")
        c = self.coalescer
        m.counter("traverz_ingest_flushes_total", "coalesced produce calls for pings", lambda: c.flushes)
        m.counter("traverz_ingest_records_total", "Kafka records the pings went out in", lambda: c.records)
        m.gauge("traverz_ingest_generation", "generation of the topics produced to", lambda: self.topics.generation)

    def _pings_acked(self, requests: int, pings: int, seconds: float) -> None:
        """A coalesced flush was acknowledged: each of its ``requests`` is answered 202.

        Counted here once per flush rather than by each request (the pings route counts only
        its other answers): per request, four metric updates were a tenth of its own Python.
        """
        self.requests.inc_series(self._pings_202, requests)
        self.accepted.inc_series((), pings)
        self.produce_latency.observe(seconds, requests)

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

    # -- the other routes (Starlette) --------------------------------------------------
    async def post_report(self, request: Request, ident: DeviceIdentity) -> Response:
        doc = await self._body(request)
        if not isinstance(doc, dict):
            raise BodyError(400, "invalid_report", "a report is an object")
        reason = report_problem(doc, self.clock())
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
        key = report_key(report_id, self.s.key_resolution)
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
