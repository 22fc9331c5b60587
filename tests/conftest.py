"""Test harness: a real redis-server on a free port, and the speech data set."""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared import redis_server
from tests.stack import Stack, free_port

REPO = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("VQ_SPEECH_DIR", REPO.parent / "shared" / "data" / "speech"))


def wait_port(port: int, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port} after {timeout_s} s")


def manifest() -> dict[str, dict[str, str]]:
    with (SPEECH / "MANIFEST.tsv").open(newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


@pytest.fixture(scope="session")
def speech() -> Path:
    assert (SPEECH / "MANIFEST.tsv").exists(), f"speech data missing at {SPEECH}"
    return SPEECH


@pytest.fixture(scope="session")
def references() -> dict[str, dict[str, str]]:
    return manifest()


@contextlib.contextmanager
def running_redis(data_dir: Path) -> Iterator[str]:
    """A real redis-server (AOF on, as in production) on a free port; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(redis_server.command(port, data_dir), stdout=subprocess.DEVNULL)
    try:
        wait_port(port, 10, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def conn(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    c.flushdb()
    yield c
    c.close()


@contextlib.contextmanager
def started_stack(tmp_path_factory: pytest.TempPathFactory, name: str, llm_base_url: str | None = None,
                  extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """The whole stack as real processes (llama.cpp server unless `llm_base_url`, asr/llm/tts workers,
    gateway) on its own Redis: other tests' workers must not take its jobs, nor it theirs."""
    with running_redis(tmp_path_factory.mktemp(f"{name}-redis")) as url:
        s = Stack(url, tmp_path_factory.mktemp(f"{name}-logs"))
        try:
            yield s.start(llm_base_url, extra_env)
        finally:
            s.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Shared by the gateway, browser and batch tests."""
    with started_stack(tmp_path_factory, "stack") as s:
        yield s


@pytest.fixture
def stack_redis(stack: Stack) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(stack.redis_url)
    yield conn
    conn.close()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=300) as c:
        yield c
