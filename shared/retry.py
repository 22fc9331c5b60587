"""Retries around outside APIs (the LLM server, edge-tts), owned by tenacity.

`call(fn, service=..., settings=..., classify=...)` runs `fn` and asks
`classify` about each exception it raises:

- a `Retryable` (429, 5xx, timeout, connection) is retried, waiting the
  upstream's Retry-After (capped at `retry_backoff_max_s`) or an exponential
  backoff with jitter, bounded by `retry_max_attempts` and `retry_total_s`.
  Every retry counts in `voicequeue_retries{service, cause}`. Once exhausted,
  `call` raises `UpstreamError` "upstream_rate_limited" (last cause 429) or
  "upstream_unavailable" (anything else).
- an `UpstreamError` (a definite refusal such as 400/401/404) is raised at
  once, never retried; its usual reason is "upstream_error".
- None: the exception propagates unchanged, so a bug in our own code stays a
  crash ("internal_error") instead of passing for an upstream failure.

`fn` may also raise `Retryable` itself when it spots a retryable condition.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import tenacity

from shared import metrics
from shared.config import CommonSettings
from shared.stage import StageError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Retryable(Exception):
    """A failure worth another attempt.

    `cause` labels the retry metric: "429", "5xx", "timeout" or "connection".
    """

    def __init__(self, cause: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause
        self.detail = detail
        self.retry_after = retry_after


class UpstreamError(StageError):
    """An outside API failed for good: "upstream_rate_limited", "upstream_unavailable" or "upstream_error"."""


Classifier = Callable[[BaseException], Retryable | UpstreamError | None]


def call(fn: Callable[[], T], *, service: str, settings: CommonSettings, classify: Classifier) -> T:
    """`fn()` with retries as the module docstring describes. `service` labels metrics and messages."""

    def attempt() -> T:
        try:
            return fn()
        except (Retryable, UpstreamError):
            raise
        except Exception as exc:
            verdict = classify(exc)
            if verdict is None:
                raise
            raise verdict from exc

    backoff = tenacity.wait_exponential_jitter(
        multiplier=settings.retry_backoff_s, max=settings.retry_backoff_max_s, jitter=settings.retry_backoff_s
    )

    def wait(state: tenacity.RetryCallState) -> float:
        exc = _exception(state)
        if isinstance(exc, Retryable) and exc.retry_after is not None:
            return max(0.0, min(exc.retry_after, settings.retry_backoff_max_s))
        return float(backoff(state))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = _exception(state)
        cause = exc.cause if isinstance(exc, Retryable) else "unknown"
        metrics.inc(metrics.RETRIES, service=service, cause=cause)
        log.info("retrying", extra={"service": service, "cause": cause, "attempt": state.attempt_number,
                                    "sleep_s": round(state.upcoming_sleep, 3)})

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(Retryable),
        # stop_before_delay: never start a sleep that would end past the total budget.
        stop=tenacity.stop_after_attempt(settings.retry_max_attempts)
        | tenacity.stop_before_delay(settings.retry_total_s),
        wait=wait,
        before_sleep=before_sleep,
        reraise=True,
    )
    start = time.monotonic()
    try:
        return retrying(attempt)
    except Retryable as exc:
        reason = "upstream_rate_limited" if exc.cause == "429" else "upstream_unavailable"
        attempts = retrying.statistics.get("attempt_number", 1)
        raise UpstreamError(
            reason,
            f"{service}: gave up after {attempts} attempt(s) in {time.monotonic() - start:.1f} s; "
            f"last error: {exc}",
        ) from exc
    except UpstreamError as exc:
        if exc.message.startswith(f"{service}:"):
            raise
        raise UpstreamError(exc.reason, f"{service}: {exc.message}") from exc.__cause__


def _exception(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def classify_http_status(
    status: int, headers: Mapping[str, Any] | None = None
) -> Retryable | UpstreamError | None:
    """Verdict on an HTTP error status: 429/408/5xx retryable, other 4xx a refusal, anything else None."""
    if status == 429:
        return Retryable("429", "rate limited", retry_after_s(headers))
    if status == 408:
        return Retryable("timeout", "HTTP 408 request timeout", retry_after_s(headers))
    if status >= 500:
        return Retryable("5xx", f"HTTP {status}", retry_after_s(headers))
    if 400 <= status < 500:
        return UpstreamError("upstream_error", f"upstream refused the request with HTTP {status}")
    return None


def retry_after_s(headers: Mapping[str, Any] | None, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP-date), if given."""
    if not headers:
        return None
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = _header(headers, "retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    """Case-insensitive lookup that works for plain dicts as well as httpx/aiohttp header maps."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    return None if value is None else str(value).strip()
