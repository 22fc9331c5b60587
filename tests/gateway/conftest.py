"""The whole stack as real processes: llama.cpp server, asr/llm/tts workers and the gateway."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.stack import Stack


@pytest.fixture(scope="session")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(redis_url, tmp_path_factory.mktemp("stack-logs"))
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=300) as c:
        yield c
