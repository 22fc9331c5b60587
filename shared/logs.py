"""Structured JSON logs: one object per line, carrying job id, tenant and stage when known, and no PII.

Context fields: `with logs.context(job_id=..., stage=...)` around a unit of work,
`logs.bind(tenant=...)` inside it, and every record logged meanwhile (by any
logger, in any thread the context was copied to) carries them. `bind` updates
the innermost context in place, so a value bound in a worker thread (a sync
FastAPI dependency) is seen by the request's other log lines too.

Privacy, applied by a filter on the handler so it covers every logger (ours,
uvicorn's, rq's): text-bearing extra fields (`text`, `transcript`, `reply`,
`prompt`, ...) are replaced by their length unless `debug` is on; bytes (audio)
are never logged; PII is replaced in the message, in string fields and in
tracebacks (`shared.redact`, counted as where="log") unless `redact_pii` is off.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from shared import redact

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

# Extra fields that carry what a caller said or heard: kept only with VQ_DEBUG=true.
TEXT_FIELDS = frozenset({
    "text", "texts", "transcript", "reply", "replies", "prompt", "prompts", "question", "answer", "content",
    "messages", "message_text", "history", "segments", "words", "sentence", "sentences", "utterance", "delta",
    "user_text", "raw", "raw_output", "body", "input", "inputs", "output", "query",
    "arguments", "kwargs",  # rq logs a failed job's arguments: a sentence job's are (job id, seq, text)
})

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("vq_log_context", default=None)


def current() -> dict[str, Any]:
    """The context fields in effect here (a copy)."""
    return dict(_context.get() or {})


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Fields every record logged inside the block carries; nested blocks add to the outer ones."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the innermost context (in place, so threads sharing it see them); outside any
    context, to this context for good (a process-wide field such as the worker's name)."""
    values = {k: v for k, v in fields.items() if v is not None}
    found = _context.get()
    if found is None:
        _context.set(values)
    else:
        found.update(values)


class PrivacyFilter(logging.Filter):
    """Adds the context fields, drops raw text unless `debug`, and redacts PII everywhere (unless told not to)."""

    def __init__(self, *, debug: bool = False, redact_pii: bool = True) -> None:
        super().__init__()
        self.debug = debug
        self.redact_pii = redact_pii

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if key not in record.__dict__:
                setattr(record, key, value)
        for key, value in list(vars(record).items()):
            if key in _STANDARD:
                continue
            setattr(record, key, self._field(key, value))
        try:
            message = record.getMessage()
        except Exception:  # a malformed call (args not matching the format): log it as it came, scrubbed
            message = f"{record.msg} {record.args!r}"
            record.msg, record.args = message, None
        clean = self._scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        return True

    def _field(self, key: str, value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            return f"<{len(value)} bytes>"
        if key.lower() in TEXT_FIELDS and not self.debug:
            return f"<omitted: {_size(value)}>"
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, list | tuple | dict):
            text = json.dumps(value, default=str, ensure_ascii=False)
            clean = self._scrub(text)
            return value if clean == text else clean
        return value

    def _scrub(self, text: str) -> str:
        return redact.scrub(text, where="log") if self.redact_pii else text


def _size(value: Any) -> str:
    if isinstance(value, str):
        return f"{len(value)} chars"
    if isinstance(value, list | tuple | dict):
        return f"{len(value)} items"
    return type(value).__name__


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(time.time(), 3),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info or record.exc_text:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(out, default=str, ensure_ascii=False)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def setup(
    service: str, level: str = "INFO", as_json: bool = True, *, debug: bool | None = None,
    redact_pii: bool | None = None,
) -> None:
    """Send every logger's records to stderr through the privacy filter.

    `debug` (VQ_DEBUG) lets raw text fields through; `redact_pii` (VQ_LOG_REDACT_PII, default on) replaces
    PII in every record. Both are read from the environment when not given.
    """
    handler = logging.StreamHandler(sys.stderr)
    fmt: logging.Formatter = JsonFormatter(service) if as_json else logging.Formatter(
        f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(fmt)
    handler.addFilter(PrivacyFilter(
        debug=_env_flag("VQ_DEBUG", False) if debug is None else debug,
        redact_pii=_env_flag("VQ_LOG_REDACT_PII", True) if redact_pii is None else redact_pii,
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class RequestContext:
    """ASGI middleware: each HTTP/WebSocket request logs with its own `request_id` (and whatever the
    route binds: `logs.bind(tenant=..., job_id=...)`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with context(request_id=secrets.token_hex(6)):
            await self.app(scope, receive, send)
