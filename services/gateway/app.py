"""The gateway: FastAPI app factory and HTTP metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from prometheus_client import REGISTRY, Counter, Histogram
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as SyncRetry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway import errors, idempotency, limits, openapi
from services.gateway.calls import audiosocket as calls_audiosocket
from services.gateway.calls import registry as calls_registry
from services.gateway.calls import vad as calls_vad
from services.gateway.config import GatewaySettings
from services.gateway.routes import (
    audio,
    batches,
    calls,
    chat,
    health,
    jobs,
    knowledge,
    realtime,
    sessions,
    speech,
    tools,
    transcriptions,
    turns,
    twilio_after,
    web,
    webhooks,
)
from shared import connection, logs, metrics, queues

log = logging.getLogger(__name__)

REQUESTS = Counter("voicequeue_http_requests", "HTTP requests.", ["route", "method", "status"])
LATENCY = Histogram("voicequeue_http_request_seconds", "HTTP request latency.", ["route", "method"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
_collector_registered = False


class Observe:
    """Request count and latency by route template (pure ASGI: streams are not buffered or delayed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            # Label by route template, never the raw path: job ids would make label values unbounded.
            route = str(getattr(scope.get("route"), "path", "unmatched"))
            REQUESTS.labels(route, scope["method"], str(status)).inc()
            LATENCY.labels(route, scope["method"]).observe(time.perf_counter() - start)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        global _collector_registered
        app.state.settings = settings
        # A pooled connection Redis dropped (restart, overload) is retried on a fresh one, briefly,
        # instead of failing the request.
        retried = [redis.ConnectionError, redis.TimeoutError]
        app.state.redis = connection.client(
            settings, retry=SyncRetry(ExponentialBackoff(0.5, 0.05), 3), retry_on_error=retried)
        app.state.aredis = connection.connect_async(
            settings, retry=AsyncRetry(ExponentialBackoff(0.5, 0.05), 3), retry_on_error=retried)
        if not _collector_registered:
            REGISTRY.register(metrics.QueueDepthCollector(app.state.redis, queues.all_names()))
            REGISTRY.register(metrics.WorkersCollector(app.state.redis, queues.all_names()))
            _collector_registered = True
        health.warn_if_open(app.state.redis, settings)
        if not calls_vad.load():
            log.warning("faster-whisper is not installed (extra 'calls'): live calls will fail")
        audiosocket = None
        if settings.call_audiosocket_port:
            audiosocket = await calls_audiosocket.start_server(app.state.redis, app.state.aredis, settings)
        yield
        # `voicequeue gateway` has ended the calls already (services/gateway/server.py); under another
        # server the AudioSocket calls at least end here.
        await calls_registry.end_all(calls_registry.SHUTDOWN, settings.call_shutdown_timeout_s)
        if audiosocket is not None:
            audiosocket.close()
        await app.state.aredis.aclose()
        app.state.redis.close()

    app = FastAPI(title="voicequeue", version="0.1.0", lifespan=lifespan,
                  description="Voice back-end: audio in, transcripts, answers and spoken replies out.")
    errors.install(app)
    for module in (turns, chat, speech, transcriptions, jobs, audio, batches, sessions, health, web, calls, realtime,
                   knowledge, twilio_after, webhooks, tools):
        app.include_router(module.router)
    openapi.install(app)

    # Outermost first: metrics, Redis failures, body size, tenant/rate/streams, idempotency, queue depth, routes.
    app.add_middleware(limits.QueueDepth, settings=settings)
    app.add_middleware(idempotency.Idempotency, settings=settings)
    app.add_middleware(limits.Admission, settings=settings)
    app.add_middleware(limits.BodyLimit, settings=settings)
    app.add_middleware(errors.RedisDown)  # outside every middleware that talks to Redis
    app.add_middleware(Observe)
    app.add_middleware(logs.RequestContext)  # outermost: every log line of a request carries its context
    return app
