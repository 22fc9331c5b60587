"""`Idempotency-Key` on POST /v1/turns, /v1/chat and /v1/batches, as ASGI middleware.

The first request with a key (per tenant and route) runs and its answer is kept for
`idempotency_ttl_s`; a repeat with the same body gets that answer again with
`Idempotent-Replayed: true` and creates nothing. A repeat with another body is 422;
one arriving while the first still runs waits up to `idempotency_wait_s`, then 409.

The body is fingerprinted while it streams through (never buffered, whatever its
size). Multipart boundaries are random per request, so they are left out of the
fingerprint, and JSON is compared as parsed values, not bytes. Only 2xx answers
are kept: a refused request created no job, so its key stays free for a corrected
retry. Only JSON answers up to `idempotency_max_body_kb` are kept; others
(`turns?wait=true` audio, a huge batch listing) are replayed from the current
state of what was created: the stored id is answered with `GET /v1/jobs/{id}/audio`
(turns, plus the original X-Transcript/X-Reply-Text headers), `/v1/jobs/{id}` (chat)
or `/v1/batches/{id}`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
from typing import Any

import anyio
import redis.asyncio as aioredis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway import idempotency_store, routing
from services.gateway.config import GatewaySettings
from services.gateway.limits import every, header, send_error, state

# Headers of the original answer that a replay must not copy (the replay has its own framing).
_DROP = {b"content-length", b"date", b"server", b"transfer-encoding", b"connection"}
REPLAYED = (b"idempotent-replayed", b"true")
_ID = re.compile(rb'^\{"id": ?"([A-Za-z0-9_-]{1,64})"')


class Fingerprint:
    """SHA-256 of what makes two requests "the same": route, query, media type and body."""

    def __init__(self, scope: Scope) -> None:
        media, _, params = (header(scope, b"content-type") or "").partition(";")
        self.media = media.strip().lower()
        boundary = ""
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.lower() == "boundary":
                boundary = value.strip().strip('"')
        self.boundary = f"--{boundary}".encode() if boundary else b""
        self.hash = hashlib.sha256(f"{scope['path']}?{scope.get('query_string', b'').decode('latin-1')}\n"
                                   f"{self.media}\n".encode())
        self.json: bytearray | None = bytearray() if self.media == "application/json" else None
        self.carry = b""

    def feed(self, chunk: bytes) -> None:
        if self.json is not None:
            self.json += chunk
        elif self.boundary:
            # Boundaries are hashed as a fixed token; a partial one at the end waits for the next chunk.
            parts = (self.carry + chunk).split(self.boundary)
            tail = parts.pop()
            for part in parts:
                self.hash.update(part)
                self.hash.update(b"--BOUNDARY")
            keep = len(self.boundary) - 1
            self.hash.update(tail[:-keep] if len(tail) > keep else b"")
            self.carry = tail[-keep:] if len(tail) > keep else tail
        else:
            self.hash.update(chunk)

    def digest(self) -> str:
        if self.json is not None:
            try:
                canonical = json.dumps(json.loads(self.json), sort_keys=True, separators=(",", ":"))
                self.hash.update(canonical.encode())
            except ValueError:
                self.hash.update(bytes(self.json))
        else:
            self.hash.update(self.carry)
        return self.hash.hexdigest()


class _Recorder:
    """Passes the app's answer through and keeps what a replay needs."""

    def __init__(self, send: Send, max_body: int) -> None:
        self.send = send
        self.max_body = max_body
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.head = b""
        self.too_big = False
        self.complete = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(k.lower(), v) for k, v in message.get("headers", ())]
            # Only JSON is kept: audio (turns?wait=true) is already stored once, under the job.
            self.too_big = not dict(self.headers).get(b"content-type", b"").startswith(b"application/json")
        elif message["type"] == "http.response.body":
            if len(self.head) < 256:
                self.head += message.get("body", b"")[:256]
            if not self.too_big:
                self.body += message.get("body", b"")
                if len(self.body) > self.max_body:
                    self.too_big, self.body = True, bytearray()
            self.complete = not message.get("more_body", False)
        await self.send(message)

    def job_id(self) -> str | None:
        for k, v in self.headers:
            if k == b"x-job-id":
                return v.decode("latin-1")
        if not self.too_big:
            try:
                value = json.loads(self.body).get("id")
                return str(value) if value else None
            except (ValueError, AttributeError):
                return None
        found = _ID.search(self.head)  # our JSON answers name what they created first
        return found.group(1).decode() if found else None

    def record(self, fingerprint: str) -> dict[str, Any]:
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers if k not in _DROP]
        return {"fingerprint": fingerprint, "status": self.status, "headers": headers, "job_id": self.job_id(),
                "body": None if self.too_big else base64.b64encode(bytes(self.body)).decode()}


class Idempotency:
    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        self.app = app
        self.settings = settings
        self._stores: dict[int, idempotency_store.Store] = {}

    def _store(self, scope: Scope) -> idempotency_store.Store:
        conn: aioredis.Redis = scope["app"].state.aredis
        if id(conn) not in self._stores:
            self._stores = {id(conn): idempotency_store.Store(conn)}
        return self._stores[id(conn)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = header(scope, b"idempotency-key") if scope["type"] == "http" else None
        route = routing.submission(scope["method"], scope["path"]) if given is not None else None
        if given is None or route is None or route.replay is None:
            await self.app(scope, receive, send)
            return
        if not idempotency_store.valid(given):
            await send_error(send, 400, "invalid_idempotency_key",
                             "Idempotency-Key must be 1 to 255 printable ASCII characters")
            return
        store = self._store(scope)
        k = idempotency_store.key(str(state(scope).get("tenant", "public")), scope["path"], given)
        owner = secrets.token_hex(8)
        deadline = time.monotonic() + self.settings.idempotency_wait_s
        while True:
            found = await store.claim(k, owner)
            if found is None:
                await self._first(store, k, owner, scope, receive, send)
                return
            if found.get("state") == "done":
                await self._repeat(found, scope, receive, send)
                return
            if time.monotonic() >= deadline:
                await send_error(send, 409, "idempotency_in_progress",
                                 "a request with this Idempotency-Key is still being processed; retry shortly",
                                 {"Retry-After": "1"})
                return
            await asyncio.sleep(0.05)

    async def _first(self, store: idempotency_store.Store, k: str, owner: str, scope: Scope, receive: Receive,
                     send: Send) -> None:
        fingerprint = Fingerprint(scope)
        whole = False

        async def hashed_receive() -> Message:
            nonlocal whole
            message = await receive()
            if message["type"] == "http.request":
                fingerprint.feed(message.get("body", b""))
                whole = whole or not message.get("more_body", False)
            return message

        recorder = _Recorder(send, self.settings.idempotency_max_body_kb * 1024)
        kept = False
        lease = asyncio.ensure_future(every(idempotency_store.LOCK_S / 3, lambda: store.refresh(k, owner)))
        try:
            try:
                await self.app(scope, hashed_receive, recorder)
            finally:
                lease.cancel()
            if 200 <= recorder.status < 300 and recorder.complete and whole:
                kept = await store.finish(k, owner, recorder.record(fingerprint.digest()),
                                          self.settings.idempotency_ttl_s)
        finally:
            if not kept:
                with anyio.CancelScope(shield=True):
                    await store.release(k, owner)

    async def _repeat(self, found: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        fingerprint = Fingerprint(scope)
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            fingerprint.feed(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if fingerprint.digest() != found.get("fingerprint"):
            await send_error(send, 422, "idempotency_key_reused",
                             "this Idempotency-Key was used with a different request; use a new key")
            return
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in found.get("headers", [])]
        if found.get("body") is not None:
            body = base64.b64decode(found["body"])
            await send({"type": "http.response.start", "status": found["status"],
                        "headers": [*headers, (b"content-length", str(len(body)).encode()), REPLAYED]})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self._current(found, headers, scope, send)

    async def _current(self, found: dict[str, Any], headers: list[tuple[bytes, bytes]], scope: Scope,
                       send: Send) -> None:
        """Answer with the current state of what the first request created (its body was not kept)."""
        job_id = found.get("job_id")
        route = routing.submission(scope["method"], scope["path"])
        current = route.replay if route is not None else None
        if not job_id or current is None:
            await send_error(send, 409, "idempotency_replay_unavailable",
                             "the original answer with this Idempotency-Key cannot be replayed; use a new key")
            return
        path = current.format(job_id)
        sub = {**scope, "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"",
               "headers": [(k, v) for k, v in scope["headers"]
                           if k.lower() not in (b"content-type", b"content-length", b"idempotency-key")]}
        sub.pop("route", None)
        sub.pop("endpoint", None)
        sub.pop("path_params", None)
        sent = False

        async def empty() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        async def merged(message: Message) -> None:
            if message["type"] == "http.response.start":
                fresh = list(message.get("headers", ()))
                names = {k.lower() for k, _ in fresh}
                keep = [(k, v) for k, v in headers if k not in names] if message["status"] < 300 else []
                message = {**message, "headers": [*fresh, *keep, REPLAYED]}
            await send(message)

        await self.app(sub, empty, merged)
