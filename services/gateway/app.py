"""The gateway: FastAPI app factory and HTTP metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response
from prometheus_client import REGISTRY, Counter, Histogram

from services.gateway import errors
from services.gateway.config import GatewaySettings
from services.gateway.routes import audio, batches, chat, health, jobs, sessions, speech, transcriptions, turns, web
from shared import metrics, queues

log = logging.getLogger(__name__)

REQUESTS = Counter("voicequeue_http_requests", "HTTP requests.", ["route", "method", "status"])
LATENCY = Histogram("voicequeue_http_request_seconds", "HTTP request latency.", ["route", "method"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
_collector_registered = False


def _route_template(request: Request) -> str:
    # Label by route template, never the raw path: job ids would make label values unbounded.
    route = request.scope.get("route")
    return str(getattr(route, "path", "unmatched"))


async def _too_large(request: Request, settings: GatewaySettings) -> Response | None:
    length = request.headers.get("content-length")
    # Refuse before reading the body: multipart overhead is allowed on top of the file limit.
    if length and length.isdigit() and int(length) > settings.max_upload_bytes + 1024 * 1024:
        return Response(
            content=(b'{"error":{"code":"file_too_large","message":"the request body is larger than the '
                     + f'{settings.max_upload_mb:g} MB limit'.encode() + b'"}}'),
            status_code=413, media_type="application/json",
        )
    return None


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        global _collector_registered
        app.state.settings = settings
        app.state.redis = redis.Redis.from_url(settings.redis_url)
        app.state.aredis = aioredis.Redis.from_url(settings.redis_url)
        if not _collector_registered:
            REGISTRY.register(metrics.QueueDepthCollector(app.state.redis, queues.all_names()))
            REGISTRY.register(metrics.WorkersCollector(app.state.redis, queues.all_names()))
            _collector_registered = True
        yield
        await app.state.aredis.aclose()
        app.state.redis.close()

    app = FastAPI(title="voicequeue", version="0.1.0", lifespan=lifespan,
                  description="Voice back-end: audio in, transcripts, answers and spoken replies out.")
    errors.install(app)
    for module in (turns, chat, speech, transcriptions, jobs, audio, batches, sessions, health, web):
        app.include_router(module.router)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await _too_large(request, settings) or await call_next(request)
        route = _route_template(request)
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        LATENCY.labels(route, request.method).observe(time.perf_counter() - start)
        return response

    return app
