"""Limits and backpressure, as plain ASGI middleware (bodies are counted as they stream in).

- `BodyLimit`: 413 for a Content-Length over the route's limit before reading a byte, and for a
  chunked body as soon as the count passes it; the rest is never read.
- `Admission`: resolves the tenant (401), takes a token from its submit or read bucket (429 +
  Retry-After), and holds one of its stream slots for the life of an SSE or audio stream (429).
- `QueueDepth`: 429 for a submission whose first queue is already full, before its body is read.
  It runs after idempotency, so a replayed submission is answered even when the queue is full.
  The binding check is the enqueue itself (`admission.Room`, in one transaction); this one only
  spares reading an upload that would be refused.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway import admission, auth, errors, ratelimit, routing
from services.gateway.config import GatewaySettings
from services.gateway.errors import ApiError
from shared import keys, queues

MB = 1024 * 1024
# Refusals made here never reach a route, so the HTTP metrics label them "unmatched"; this says why.
REFUSALS = Counter("voicequeue_gateway_refusals", "Requests refused by the gateway's limits, by error code.",
                   ["code"])

def submit_queue(method: str, path: str) -> str | None:
    """The queue a submission lands on, or None if the request submits nothing."""
    found = routing.submission(method, path)
    return found.queue if found is not None else None


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def state(scope: Scope) -> dict[str, Any]:
    """The request's `request.state` dict (shared with the routes)."""
    found: dict[str, Any] = scope.setdefault("state", {})
    return found


async def send_error(send: Send, status: int, code: str, message: str,
                     headers: dict[str, str] | None = None) -> None:
    REFUSALS.labels(code).inc()
    content = json.dumps(errors.body(code, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content, "more_body": False})


def _app_state(scope: Scope) -> Any:
    return scope["app"].state


class BodyLimit:
    """413 once a request body is larger than its route allows, without reading the rest."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        self.app = app
        self.settings = settings

    def limit(self, scope: Scope) -> tuple[int, str, str]:
        """(bytes allowed, error code, what the limit is called) for this request."""
        s = self.settings
        multipart = (header(scope, b"content-type") or "").lower().startswith("multipart/")
        found = routing.submission(scope["method"], scope["path"])
        body = found.body if found is not None else "json"
        if scope["method"] == "POST" and scope["path"] == routing.KNOWLEDGE_UPLOAD:
            return (int(s.knowledge_max_document_bytes + s.upload_form_slack_mb * MB), "document_too_large",
                    f"the document is larger than the {s.knowledge_max_document_mb:g} MB limit")
        if body == "upload":
            return (int((s.max_upload_mb + s.upload_form_slack_mb) * MB), "file_too_large",
                    f"the upload is larger than the {s.max_upload_mb:g} MB limit")
        if body == "batch" and (multipart or (found is not None and found.pattern)):
            return (int(s.batch_max_request_mb * MB), "request_too_large",
                    f"the batch request is larger than the {s.batch_max_request_mb:g} MB limit")
        return (int(s.json_max_request_mb * MB), "request_too_large",
                f"the request body is larger than the {s.json_max_request_mb:g} MB limit")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed, code, what = self.limit(scope)
        length = header(scope, b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > allowed):
            if length.strip().isdigit():
                await send_error(send, 413, code, what, {"Connection": "close"})
            else:
                await send_error(send, 400, "bad_content_length", "Content-Length is not a number")
            return
        seen = 0
        refused = answered = started = False

        async def counted_receive() -> Message:
            nonlocal seen, refused, answered
            if refused:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > allowed:
                    refused = True
                    if not started:
                        answered = True
                        await send_error(send, 413, code, what, {"Connection": "close"})
                    # To the app the client is gone: it stops reading and its answer goes nowhere.
                    return {"type": "http.disconnect"}
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal started
            if answered:
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not answered:
                raise


class _StreamSlots:
    """Per-tenant slots for long-lived streams: a sorted set of slot ids scored by expiry time.

    Each open stream refreshes its slot; a slot whose gateway died is not refreshed and
    drops out after `ttl_s`, so a crash cannot leak a tenant's slots for good."""

    _ACQUIRE = """
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
    return 1
    """
    _REFRESH = """
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
    return 1
    """

    def __init__(self, conn: aioredis.Redis, ttl_s: int) -> None:
        self.conn = conn
        self.ttl_ms = ttl_s * 1000
        self._acquire = conn.register_script(self._ACQUIRE)
        self._refresh = conn.register_script(self._REFRESH)

    @staticmethod
    def key(tenant: str) -> str:
        return keys.streams(tenant)

    async def acquire(self, tenant: str, slot: str, most: int) -> bool:
        return bool(await self._acquire(keys=[self.key(tenant)], args=[slot, most, self.ttl_ms]))

    async def refresh(self, tenant: str, slot: str) -> None:
        await self._refresh(keys=[self.key(tenant)], args=[slot, self.ttl_ms])

    async def release(self, tenant: str, slot: str) -> None:
        await self.conn.zrem(self.key(tenant), slot)


async def every(seconds: float, action: Callable[[], Awaitable[Any]]) -> None:
    """Run `action` every `seconds` until cancelled (keeps leases alive while a request runs)."""
    while True:
        await asyncio.sleep(seconds)
        await action()


class Admission:
    """Tenant, rate limit and stream slots for every /v1 request, before the route runs."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        self.app = app
        self.settings = settings
        self._buckets: dict[int, ratelimit.TokenBucket] = {}
        self._slots: dict[int, _StreamSlots] = {}

    def _tools(self, scope: Scope) -> tuple[ratelimit.TokenBucket, _StreamSlots]:
        # Built lazily: the Redis client exists only once the app's lifespan has started.
        conn: aioredis.Redis = _app_state(scope).aredis
        if id(conn) not in self._buckets:
            self._buckets = {id(conn): ratelimit.TokenBucket(conn)}
            self._slots = {id(conn): _StreamSlots(conn, self.settings.stream_slot_ttl_s)}
        return self._buckets[id(conn)], self._slots[id(conn)]

    def _rate(self, tenant: str, submit: bool) -> tuple[str, float, int]:
        s = self.settings
        if not submit:
            return "read", s.rate_limit_read_per_s, s.rate_limit_read_burst
        own = s.rate_limit_overrides.get(tenant)
        return ("submit", own.per_s, own.burst) if own else ("submit", s.rate_limit_per_s, s.rate_limit_burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        streaming = scope["method"] == "GET" and routing.STREAMS.match(scope["path"]) is not None
        slot = secrets.token_hex(8)
        try:
            refusal = await self._admit(scope, streaming, slot)
        except errors.REDIS_DOWN:
            refusal = errors.redis_unavailable()
        if refusal is not None:
            await send_error(send, refusal.status, refusal.code, refusal.message, refusal.headers)
        elif streaming:
            await self._stream(scope, receive, send, slot)
        else:
            await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, streaming: bool, slot: str) -> ApiError | None:
        """Why this request is refused (401, 429), or None; a stream also takes its slot."""
        sync_conn: redis.Redis = _app_state(scope).redis
        try:
            tenant = await anyio.to_thread.run_sync(auth.resolve, sync_conn, self.settings,
                                                    header(scope, b"authorization"))
        except ApiError as exc:
            return exc
        state(scope)["tenant"] = tenant
        buckets, slots = self._tools(scope)
        submit = submit_queue(scope["method"], scope["path"]) is not None
        bucket, per_s, burst = self._rate(tenant, submit)
        verdict = await buckets.take(tenant, bucket, per_s, burst)
        if not verdict.allowed:
            what = "submissions" if submit else "reads"
            return ApiError(429, "rate_limited", f"too many {what}: the limit is {per_s:g} a second (bursts of "
                            f"{burst}); retry after {verdict.retry_after_s} s",
                            {"Retry-After": str(verdict.retry_after_s)})
        most = self.settings.max_streams_per_tenant
        if streaming and not await slots.acquire(tenant, slot, most):
            return ApiError(429, "too_many_streams", f"at most {most} streams may be open at once; close one first",
                            {"Retry-After": "1"})
        return None

    async def _stream(self, scope: Scope, receive: Receive, send: Send, slot: str) -> None:
        """Run a stream holding its slot (refreshed meanwhile); the slot is freed as soon as the client leaves."""
        slots, tenant = self._tools(scope)[1], state(scope)["tenant"]
        try:
            await until_disconnect(self.app, scope, receive, send,
                                   lambda: every(slots.ttl_ms / 3000, lambda: slots.refresh(tenant, slot)))
        finally:
            with anyio.CancelScope(shield=True):
                await slots.release(tenant, slot)


async def until_disconnect(app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                           alongside: Callable[[], Awaitable[None]]) -> None:
    """Run a bodiless request's app until it finishes or the client goes away (then cancel it), with
    `alongside` running meanwhile. A stream otherwise notices a gone client only at its next write."""
    gone = asyncio.Event()
    delivered = False

    async def app_receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    running = asyncio.ensure_future(app(scope, app_receive, send))
    helpers = [asyncio.ensure_future(watch()), asyncio.ensure_future(alongside())]
    try:
        await asyncio.wait([running, helpers[0]], return_when=asyncio.FIRST_COMPLETED)
        if running.done() and not gone.is_set():
            running.result()
    finally:
        for task in (running, *helpers):
            task.cancel()
        await asyncio.gather(running, *helpers, return_exceptions=True)


class QueueDepth:
    """429 for new work when the queue it would join is already full (early; `admission` decides)."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        queue = submit_queue(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if queue is None:
            await self.app(scope, receive, send)
            return
        most = admission.limit(self.settings, queue)
        conn: aioredis.Redis = _app_state(scope).aredis
        depth = int(await conn.llen(queues.rq_key(queue)))
        if depth >= most:
            refused = await anyio.to_thread.run_sync(admission.refusal, _app_state(scope).redis, self.settings,
                                                     admission.QueueFull(queue, depth, most))
            await send_error(send, refused.status, refused.code, refused.message, refused.headers)
            return
        await self.app(scope, receive, send)
