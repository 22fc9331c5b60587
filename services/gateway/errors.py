"""API errors: every refusal is a 4xx with a machine code and a message saying what was wrong.

Redis being unreachable is not the caller's fault but is not a bug either: Redis restarting, a
Sentinel failover, a full Redis. Wherever it happens (a middleware or a route, before or after the
request was admitted) the answer is 503 `redis_unavailable` with Retry-After and the same body.
"""

from __future__ import annotations

import json
import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# The job store cannot answer now, but may in a moment. OutOfMemoryError and ReadOnlyError are
# ResponseErrors: a full Redis, and a demoted primary still reached before the failover is seen.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError,
              redis.exceptions.ReadOnlyError)
REDIS_RETRY_AFTER_S = 2  # a restart or a failover takes a few seconds; sooner only adds load


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def body(code: str, message: str) -> dict[str, object]:
    # "error" mirrors OpenAI's shape so SDK clients surface the message; "detail" is FastAPI's.
    return {"error": {"code": code, "message": message, "type": "invalid_request_error"}, "detail": message}


def redis_unavailable() -> ApiError:
    return ApiError(503, "redis_unavailable", "the job store is unreachable; nothing was lost that was "
                    "acknowledged: retry after the Retry-After seconds", {"Retry-After": str(REDIS_RETRY_AFTER_S)})


class RedisDown:
    """503 `redis_unavailable` for a Redis failure in a middleware or a route, if nothing was sent yet
    (a stream cut off mid-way can only be closed: its client reconnects with Last-Event-ID)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except REDIS_DOWN:
            log.warning("Redis unavailable during a request", exc_info=True,
                        extra={"path": scope.get("path"), "answered": started})
            if started:
                return
            exc = redis_unavailable()
            content = json.dumps(body(exc.code, exc.message)).encode()
            await send({"type": "http.response.start", "status": exc.status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                (b"retry-after", str(REDIS_RETRY_AFTER_S).encode())]})
            await send({"type": "http.response.body", "body": content, "more_body": False})


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        if err.get("type") == "missing":
            parts.append(f"missing field '{loc}'")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"unknown field '{loc}'")
        else:
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def _malformed_json(exc: RequestValidationError) -> str | None:
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            where = err.get("loc", ("body", "?"))[-1]
            reason = (err.get("ctx") or {}).get("error", "not JSON")
            return f"the body is not valid JSON: {reason} at character {where}"
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    @app.exception_handler(redis.exceptions.OutOfMemoryError)
    @app.exception_handler(redis.exceptions.ReadOnlyError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis unavailable during a request", exc_info=exc, extra={"path": request.url.path})
        refusal = redis_unavailable()
        return JSONResponse(body(refusal.code, refusal.message), status_code=503, headers=refusal.headers)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        # Starlette still logs the traceback; the client gets the documented shape, not a bare text 500.
        return JSONResponse(body("internal_error", "the gateway failed on this request; it has been logged"),
                            status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        broken = _malformed_json(exc)
        if broken:
            return JSONResponse(body("malformed_json", broken), status_code=400)
        return JSONResponse(body("invalid_request", _describe(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "malformed_request" if exc.status_code == 400 else f"http_{exc.status_code}"
        return JSONResponse(body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)
