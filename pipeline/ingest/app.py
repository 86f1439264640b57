"""The ingest proxy: authenticated, validated, durable front door for phones.

202 means Kafka (acks=all, idempotent producer) holds every accepted ping of the
request. A client mistake is a 4xx with a machine-readable ``reason``; Kafka
trouble is a 503 with ``Retry-After`` — never an acknowledgement of data Kafka
did not take.

``POST /v1/pings`` is nearly all of the traffic, so it is a plain ASGI handler
(``pings_route.PingsRoute``) that the ``FrontDoor`` calls before Starlette's
middleware and router. Its pings go through the ``Coalescer``: concurrent requests
share Kafka records and one acknowledgement. Every other route is Starlette's
(``service.IngestService``). The modules: ``body`` (limits), ``wire`` (ping decoding and
record encoding), ``accept`` (the reference validation path), ``coalesce``, ``sink`` and
``lanes`` (Kafka), ``generation`` (topic generations), ``reports``, ``responses``, ``openapi``.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pipeline.ingest.generation import GenerationFollower, fetch_metadata
from pipeline.ingest.lanes import ProducerLanes
from pipeline.ingest.openapi import OPENAPI
from pipeline.ingest.pings_route import PingsRoute
from pipeline.ingest.responses import json_response
from pipeline.ingest.service import IngestService
from pipeline.ingest.sink import KafkaSink, Sink
from pipeline.settings import Settings

# Producers (connections) whose flushes may await their acks at once: aiokafka has one produce
# request per broker in flight per producer, so with one a flush also waits for the one before.
PRODUCER_LANES = 2

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# Young collections only after this many more container objects were made than freed (CPython's
# default is 700). A request in flight holds ~20-30 of them (uvicorn's cycle, scope, event and
# task, our coroutine frames), and at 256 connections they are alive together: with 700 a young
# collection ran every ~140 single-ping requests and walked them all, then passed them on to be
# walked again in the older generations — 3-4 us a request in-process (gc callbacks timed).
# Garbage in cycles (rare here: tracebacks) waits at most this many allocations longer.
YOUNG_GC_THRESHOLD = 50_000


# glibc malloc settings (mallopt's parameter numbers): a flush's buffers — records, batches, the
# produce request, each ~100-300 KB — are above its mmap threshold or make it trim the heap top, so
# every flush faulted fresh zeroed pages in (perf: ~3 faults and ~5 us of kernel time a 50-ping
# request, clear_page). Kept, the freed memory is reused; the heap stays at its high-water mark.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREED = 256 << 20  # bytes of free heap top kept instead of returned to the system
_MMAP_ABOVE = 32 << 20  # allocations from the heap up to this size (glibc's maximum on 64-bit)


def keep_freed_memory() -> bool:
    """Make malloc reuse freed large blocks instead of unmapping them (glibc only; False elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc (musl, macOS): their allocators behave otherwise
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED))


def _settle_heap() -> None:
    """Move what startup built out of the cyclic GC's reach (measured: 15 % of batch CPU was GC).

    A batch request allocates ~100 dicts and a few lists; every 700 container allocations run
    a young collection, and now and then a full one walks every object of the process —
    modules, Starlette, aiokafka, the OpenAPI document. Frozen, those are never walked again;
    the requests' own objects are still collected, less often (``YOUNG_GC_THRESHOLD``).
    """
    keep_freed_memory()
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


class PingsEndpoint:
    """``POST /v1/pings`` as an ASGI app (a class, so Starlette's Route mounts it as one).

    The route exists once the lifespan made the service; until then there is nothing to serve.
    """

    def __init__(self) -> None:
        self.route: PingsRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route
        if route is None:
            raise RuntimeError("the ingest service is not started (no lifespan)")
        await route(scope, receive, send)


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
            and self.pings_endpoint.route is not None
        ):
            await self.pings_endpoint.route(scope, receive, send)  # one coroutine frame fewer to resume on the ack
        else:
            await self.app(scope, receive, send)


def build_app(settings: Settings, sink: Sink | None = None) -> FrontDoor:
    """The ASGI app; without ``sink`` it owns a Kafka producer for its lifetime."""
    holder: dict[str, IngestService] = {}
    pings_endpoint = PingsEndpoint()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sink is not None:
            service = holder["svc"] = IngestService(settings, sink)
            pings_endpoint.route = PingsRoute(service)
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
        pings_endpoint.route = PingsRoute(service)
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
