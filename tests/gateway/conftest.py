"""The whole stack as real processes: llama.cpp server, asr/llm/tts workers and the gateway."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.conftest import running_redis
from tests.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Its own Redis: other tests' workers must not take the stack's jobs, nor the stack theirs."""
    with running_redis(tmp_path_factory.mktemp("stack-redis")) as url:
        s = Stack(url, tmp_path_factory.mktemp("stack-logs"))
        try:
            yield s.start()
        finally:
            s.stop()


@pytest.fixture
def stack_redis(stack: Stack) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(stack.redis_url)
    yield conn
    conn.close()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=300) as c:
        yield c
