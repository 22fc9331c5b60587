"""shared.retry against a real local HTTP server that answers 429 + Retry-After, 5xx, 400 and slowly."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from shared import retry
from shared.config import CommonSettings
from shared.retry import Retryable, UpstreamError
from tests.fakes.openai_server import Fail, FakeOpenAI, Reply

SERVICE = "retry-test"


def retries(cause: str) -> float:
    return REGISTRY.get_sample_value("voicequeue_retries_total", {"service": SERVICE, "cause": cause}) or 0.0


def settings(**kw: Any) -> CommonSettings:
    base: dict[str, Any] = {"retry_max_attempts": 4, "retry_total_s": 10.0, "retry_backoff_s": 0.05,
                            "retry_backoff_max_s": 0.2}
    return CommonSettings(**(base | kw))


def classify(exc: BaseException) -> Retryable | UpstreamError | None:
    """What an httpx-based caller (edge-tts style) would pass."""
    if isinstance(exc, httpx.HTTPStatusError):
        return retry.classify_http_status(exc.response.status_code, exc.response.headers)
    if isinstance(exc, httpx.TimeoutException):
        return Retryable("timeout", str(exc))
    if isinstance(exc, httpx.TransportError):
        return Retryable("connection", str(exc))
    return None


def chat(url: str, timeout_s: float = 5.0) -> Callable[[], str]:
    def fn() -> str:
        r = httpx.post(f"{url}/chat/completions", timeout=timeout_s,
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        r.raise_for_status()
        return str(r.json()["choices"][0]["message"]["content"])
    return fn


def test_429_with_retry_after_then_success_waits_as_told() -> None:
    before = retries("429")
    with FakeOpenAI(script=[Fail(429, retry_after="1")], default=Reply("fine now")) as fake:
        start = time.monotonic()
        out = retry.call(chat(fake.base_url), service=SERVICE, settings=settings(retry_backoff_max_s=5),
                         classify=classify)
        elapsed = time.monotonic() - start
        reqs = fake.chat_requests
    assert out == "fine now"
    assert len(reqs) == 2
    gap = reqs[1].at - reqs[0].at
    assert 0.95 <= gap < 1.5, gap  # Retry-After, not the 0.05 s backoff
    assert elapsed < 2.0
    assert retries("429") - before == 1


def test_retry_after_as_http_date() -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s from now
    with FakeOpenAI(script=[Fail(503, retry_after=when)], default=Reply("ok")) as fake:
        out = retry.call(chat(fake.base_url), service=SERVICE, settings=settings(retry_backoff_max_s=5),
                         classify=classify)
        gap = fake.chat_requests[1].at - fake.chat_requests[0].at
    assert out == "ok"
    assert 0.9 <= gap < 2.6, gap


def test_retry_after_is_capped_by_backoff_max() -> None:
    with FakeOpenAI(script=[Fail(429, retry_after="30")], default=Reply("ok")) as fake:
        start = time.monotonic()
        retry.call(chat(fake.base_url), service=SERVICE, settings=settings(retry_backoff_max_s=0.3),
                   classify=classify)
        assert time.monotonic() - start < 1.5


def test_always_500_gives_up_after_max_attempts() -> None:
    before = retries("5xx")
    with FakeOpenAI(default=Fail(500)) as fake:
        start = time.monotonic()
        with pytest.raises(UpstreamError) as info:
            retry.call(chat(fake.base_url), service=SERVICE, settings=settings(), classify=classify)
        elapsed = time.monotonic() - start
        attempts = len(fake.chat_requests)
    assert info.value.reason == "upstream_unavailable"
    assert "5xx" in info.value.message and SERVICE in info.value.message
    assert attempts == 4
    assert retries("5xx") - before == 3
    assert elapsed < 3 * (0.2 + 0.05) + 1.0  # three sleeps of at most backoff_max (+ jitter), plus requests


def test_total_time_bounds_retries() -> None:
    with FakeOpenAI(default=Fail(503, retry_after="1")) as fake:
        start = time.monotonic()
        with pytest.raises(UpstreamError) as info:
            retry.call(chat(fake.base_url), service=SERVICE,
                       settings=settings(retry_max_attempts=50, retry_total_s=2.5, retry_backoff_max_s=5),
                       classify=classify)
        elapsed = time.monotonic() - start
        attempts = len(fake.chat_requests)
    assert info.value.reason == "upstream_unavailable"
    assert attempts == 3  # at 0 s, 1 s, 2 s; a third 1 s sleep would end past 2.5 s
    assert elapsed < 2.5


def test_429_forever_is_rate_limited() -> None:
    with FakeOpenAI(default=Fail(429, retry_after="0.1")) as fake:
        with pytest.raises(UpstreamError) as info:
            retry.call(chat(fake.base_url), service=SERVICE, settings=settings(retry_max_attempts=3),
                       classify=classify)
        assert len(fake.chat_requests) == 3
    assert info.value.reason == "upstream_rate_limited"
    assert "429" in info.value.message


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_not_retried(status: int) -> None:
    before = sum(retries(c) for c in ("429", "5xx", "timeout", "connection"))
    with FakeOpenAI(default=Fail(status)) as fake:
        with pytest.raises(UpstreamError) as info:
            retry.call(chat(fake.base_url), service=SERVICE, settings=settings(), classify=classify)
        assert len(fake.chat_requests) == 1
    assert info.value.reason == "upstream_error"
    assert str(status) in info.value.message
    assert isinstance(info.value.__cause__, httpx.HTTPStatusError)
    assert sum(retries(c) for c in ("429", "5xx", "timeout", "connection")) == before


def test_timeout_is_retried() -> None:
    before = retries("timeout")
    with FakeOpenAI(script=[Reply("late", delay_s=2.0)], default=Reply("on time")) as fake:
        out = retry.call(chat(fake.base_url, timeout_s=0.3), service=SERVICE, settings=settings(),
                         classify=classify)
        assert len(fake.chat_requests) == 2
    assert out == "on time"
    assert retries("timeout") - before == 1


def test_connection_refused_is_retried_then_unavailable() -> None:
    with FakeOpenAI() as fake:
        url = fake.base_url  # the port is free again once the server stops
    before = retries("connection")
    with pytest.raises(UpstreamError) as info:
        retry.call(chat(url), service=SERVICE, settings=settings(retry_max_attempts=3), classify=classify)
    assert info.value.reason == "upstream_unavailable"
    assert "connection" in info.value.message
    assert retries("connection") - before == 2


def test_unclassified_errors_propagate_unchanged() -> None:
    calls = 0

    def broken() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("a bug, not an upstream failure")

    with pytest.raises(KeyError):
        retry.call(broken, service=SERVICE, settings=settings(), classify=classify)
    assert calls == 1


def test_retry_after_parsing() -> None:
    now = time.time()
    assert retry.retry_after_s({"Retry-After": "3"}) == 3.0
    assert retry.retry_after_s({"retry-after-ms": "250", "Retry-After": "3"}) == 0.25
    assert retry.retry_after_s({"retry-after": email.utils.formatdate(now + 10, usegmt=True)}, now=now) == (
        pytest.approx(10, abs=1))
    assert retry.retry_after_s({"Retry-After": "soon"}) is None
    assert retry.retry_after_s(None) is None
    verdict = retry.classify_http_status(429, {"Retry-After": "2"})
    assert isinstance(verdict, Retryable) and verdict.cause == "429" and verdict.retry_after == 2.0
    assert retry.classify_http_status(200, {}) is None
