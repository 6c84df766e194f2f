"""The controller app: ``create_app()`` wires storage, queue, events, routers, limits and metrics.

Start-up brings the database schema to the head revision (retrying while the database comes
up), then serves. Every error a client can cause maps to a 4xx with a message; a backend that
is down is a 503, never a 500.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from hyctas_core.storage import DuplicateName, IllegalTransition, StorageError, StorageUnavailable
from services.auth import KeyCache, authenticate
from services.controller.api.main import api_router
from services.controller.dashboard import router as dashboard_router
from services.controller.read_cache import CachedReads, ReadCache
from services.controller.service import Conflict, Invalid, NotFound
from services.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS, StateCollector
from services.queue import EventBus, JobQueue, QueueError
from services.settings import Settings
from services.storage.base import Storage
from services.storage.engine import POOL_CONNECTIONS

__all__ = ["create_app", "open_storage"]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def open_storage(url: str, *, wait_s: float = 30.0) -> Storage:
    """Migrate and open the database, retrying with back-off while a database server is unreachable
    (e.g. starting). A SQLite file is local: an error there is final at once."""
    from services.storage import SQLStorage

    if url.startswith("sqlite"):
        wait_s = 0.0
    deadline, delay = time.monotonic() + wait_s, 0.5
    while True:
        try:
            return SQLStorage(url, create=True)
        except StorageError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database not ready (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse(
            {"detail": f"request body larger than {self.max_bytes} bytes"}, status.HTTP_413_CONTENT_TOO_LARGE
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            if not length.isdigit():
                await JSONResponse({"detail": "invalid Content-Length"}, 400)(scope, receive, send)
            else:
                await too_large(scope, receive, send)
            return
        received = 0
        started = exceeded = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True  # the app sees a client that went away; we answer 413
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a "disconnected" client is replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await too_large(scope, receive, send)


def _route_of(scope: Scope) -> str:
    """The route template (``/api/v1/searches/{search_id}``): bounded label values, no ids."""
    route = scope.get("route")
    if route is None:
        return "unmatched"
    path = str(getattr(route, "path", ""))
    # Routers are included lazily: the route's own path lacks the /api/v1 prefix.
    if str(scope.get("path", "")).startswith(API_PREFIX + "/") and not path.startswith(API_PREFIX + "/"):
        path = API_PREFIX + path
    return path


class Measure:
    """Counts each HTTP request and times it, by method, route template and status (plain ASGI:
    no per-request task or body stream, unlike ``@app.middleware``)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        code = 500

        async def sent(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = _route_of(scope)
            HTTP_REQUEST_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - t0)
            HTTP_REQUESTS.labels(scope["method"], route, str(code)).inc()


def _limits_in_openapi(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI shows the limits this controller enforces (they are settings, not schema constants)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            search = schema["components"]["schemas"]["SearchCreate"]["properties"]
            search["population"]["maximum"] = settings.max_population
            search["generations"]["maximum"] = settings.max_generations
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: Settings | None = None,
    *,
    storage: Storage | None = None,
    queue: JobQueue | None = None,
    events: EventBus | None = None,
) -> FastAPI:
    """The controller.

    Args:
        settings: defaults to the environment (``HYCTAS_*``).
        storage, queue, events: injected backends (tests); None opens the configured
            database (migrated at start-up), Redis stream and Redis pub/sub.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # As many request threads as the database pool has connections: a request past that
        # waits its turn in anyio's FIFO queue instead of in the pool's unordered wait (under
        # 200 clients: 8 % more requests/s and a 15 % lower p99 than the default 40 threads).
        to_thread.current_default_thread_limiter().total_tokens = POOL_CONNECTIONS
        opened: list[Any] = []
        if app.state.storage is None:
            app.state.storage = await run_in_threadpool(open_storage, settings.database_url)
            opened.append(app.state.storage)
        if app.state.queue is None:
            from services.queue import RedisQueue

            app.state.queue = RedisQueue(settings.redis_url, stream=settings.stream, lease_s=settings.lease_s)
            opened.append(app.state.queue)
        if app.state.events is None:
            from services.queue import RedisEventBus

            app.state.events = RedisEventBus(settings.redis_url, channel=settings.events_channel)
            opened.append(app.state.events)
        collector = StateCollector(app.state.storage, app.state.queue)
        app.state.collector = collector
        try:
            REGISTRY.register(collector)
            registered = True
        except ValueError:  # another app in this process (tests) already exports the state gauges
            log.warning("state metrics are already exported by another app in this process")
            registered = False
        try:
            yield
        finally:
            await app.state.read_cache.aclose()
            if registered:
                REGISTRY.unregister(collector)
            for backend in opened:
                backend.close()

    app = FastAPI(
        title="HyCTAS service",
        version="0.1.0",
        summary="Hybrid convolutional-transformer architecture search for real-time segmentation, as a service",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.storage = storage
    app.state.queue = queue
    app.state.events = events
    _limits_in_openapi(app, settings)

    # API key -> user for settings.key_cache_s: a request with a known key runs no auth query.
    app.state.keys = KeyCache(lambda key: authenticate(app.state.storage, key), ttl_s=settings.key_cache_s)
    # GETs of the API answered from memory for settings.read_cache_s (services/controller/read_cache.py).
    app.state.read_cache = ReadCache(keys=app.state.keys, ttl_s=settings.read_cache_s, events=lambda: app.state.events)
    app.add_middleware(CachedReads, cache=app.state.read_cache)
    app.add_middleware(Measure)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    def _error(code: int, detail: Any) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=code)

    @app.exception_handler(Invalid)
    async def _invalid(_: Request, exc: Invalid) -> JSONResponse:
        return _error(422, [{"loc": ["body"], "msg": str(exc), "type": "value_error"}])

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(Conflict)
    @app.exception_handler(DuplicateName)
    @app.exception_handler(IllegalTransition)
    async def _conflict(_: Request, exc: Exception) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(StorageUnavailable)
    async def _storage_down(_: Request, exc: StorageUnavailable) -> JSONResponse:
        log.error("database unavailable: %s", exc)
        return _error(503, "database unavailable; retry later")

    @app.exception_handler(StorageError)
    async def _storage_error(_: Request, exc: StorageError) -> JSONResponse:
        log.error("database error: %s", exc)  # not the client's to see: it may name tables and values
        return _error(500, "internal storage error")

    @app.exception_handler(QueueError)
    async def _queue_down(_: Request, exc: QueueError) -> JSONResponse:
        log.error("queue error: %s", exc)
        return _error(503, "job queue unavailable; nothing was queued, retry later")

    app.include_router(api_router, prefix=API_PREFIX)
    app.include_router(dashboard_router)  # /dashboard: the page needs no key, its data comes from /api/v1

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"], responses={503: {"description": "a backend is unreachable"}})
    def ready(request: Request) -> JSONResponse:
        """The database and the queue are reachable."""
        checks: dict[str, str] = {}
        try:
            request.app.state.storage.list_jobs(limit=0)
            checks["database"] = "ok"
        except StorageError as exc:
            checks["database"] = str(exc)
        try:
            request.app.state.queue.ping()
            checks["queue"] = "ok"
        except QueueError as exc:
            checks["queue"] = str(exc)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "unavailable", **checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics (text exposition format).

        With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set) the counters and
        histograms are summed over all of them; the state gauges come from the database.
        """
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(app.state.collector)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
