"""Upstream throttling through the real stack: the LLM and edge-tts answering 429 with Retry-After.

A real local HTTP server poses as the OpenAI API (tests/fakes/openai_server.py) and a
real WebSocket server as edge-tts (tests/tts/fake_edge.py); the workers are real
processes. Throttling half the calls costs retries (counted in
`voicequeue_retries_total`), not jobs. Throttling every call fails the job with
reason `upstream_rate_limited` (a failing server: `upstream_unavailable`), and the
same worker process serves the next job. edge-tts throttled for good falls back to
the local voice, and says why.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from shared import jobs
from tests.fakes.openai_server import Fail, FakeOpenAI, Reply
from tests.stack import RedisServer, Stack
from tests.tts.fake_edge import FakeEdge, serve

REPLY = "Hello there. How can I help you today?"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=Reply(text=REPLY)) as server:
        yield server


@pytest.fixture(scope="module")
def edge() -> Iterator[FakeEdge]:
    with serve(FakeEdge(mode="throttle", retry_after="1")) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAI, edge: FakeEdge) -> Iterator[Stack]:
    server = RedisServer(tmp_path_factory.mktemp("upstream-redis")).start()
    s = Stack(server.url, tmp_path_factory.mktemp("upstream-logs"))
    env = {
        "VQ_LLM_ANSWER_CACHE": "false",
        "VQ_TTS_CACHE_TTL_S": "0",
        "VQ_TTS_ENGINE": "edge",
        "VQ_TTS_EDGE_URL": edge.url,
        # A tight budget keeps the "forever" cases short: 4 attempts within 6 s.
        "VQ_RETRY_MAX_ATTEMPTS": "4",
        "VQ_RETRY_TOTAL_S": "6",
        "VQ_RETRY_BACKOFF_S": "0.2",
        "VQ_RETRY_BACKOFF_MAX_S": "2",
        "VQ_TTS_EDGE_RETRY_TOTAL_S": "3",
        # One llm job at a time, so that the fake's alternating answers meet each job in turn (the cases count
        # 429s per job and the gaps between a job's calls).
        "VQ_LLM_WORKER_JOBS": "1",
    }
    try:
        yield s.start(llm_base_url=fake.base_url, extra_env=env)
    finally:
        s.stop()
        server.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=60) as c:
        yield c


@pytest.fixture
def rconn(stack: Stack) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(stack.redis_url)
    yield c
    c.close()


def chat(client: httpx.Client, text: str, speak: bool = False) -> str:
    r = client.post("/v1/chat", json={"text": text, "speak": speak})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def finished(rconn: redis.Redis, ids: list[str], timeout_s: float = 120.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = [jobs.load(rconn, i) for i in ids]
        if all(r is not None and r["status"] in jobs.TERMINAL_STATUSES for r in records):
            return [r for r in records if r is not None]
        time.sleep(0.2)
    raise AssertionError("jobs did not finish")


def retries(stack: Stack, worker: str, service: str, cause: str = "429") -> float:
    """voicequeue_retries_total{service, cause} on a worker's /metrics."""
    total = 0.0
    for line in stack.metrics(worker).splitlines():
        if line.startswith("voicequeue_retries_total{") and f'service="{service}"' in line \
                and f'cause="{cause}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def served(fake: FakeOpenAI, since: int, status: int) -> int:
    return sum(1 for r in fake.chat_requests[since:] if isinstance(r.step, Fail) and r.step.status == status)


def test_half_the_calls_throttled_all_jobs_complete_and_retries_are_counted(
    stack: Stack, fake: FakeOpenAI, client: httpx.Client, rconn: redis.Redis
) -> None:
    retries_before = retries(stack, "llm", "llm")
    since = len(fake.chat_requests)
    fake.rotate = [Fail(429, retry_after="1", message="slow down"), Reply(text=REPLY)]
    try:
        ids = [chat(client, f"Question number {i}?") for i in range(10)]
        records = finished(rconn, ids)
    finally:
        fake.rotate = None
    assert [r["status"] for r in records] == ["done"] * 10
    assert all(r["results"]["llm"]["text"] == REPLY for r in records)
    throttled = served(fake, since, 429)
    assert throttled >= 10  # one worker, calls alternate: every job met one 429 before its answer
    assert len(fake.chat_requests) - since == throttled + 10
    assert retries(stack, "llm", "llm") == retries_before + throttled
    # Retry-After was honoured: no job's second call came sooner than 1 s after its 429.
    calls = fake.chat_requests[since:]
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls) if isinstance(a.step, Fail)]
    assert min(gaps) >= 0.95


def test_throttled_forever_fails_with_reason_and_the_worker_serves_the_next_job(
    stack: Stack, fake: FakeOpenAI, client: httpx.Client, rconn: redis.Redis
) -> None:
    pid = stack.procs["worker-llm"].pid
    since = len(fake.chat_requests)
    fake.default = Fail(429, retry_after="1", message="quota exceeded")
    try:
        ids = [chat(client, "Are you there?"), chat(client, "Anyone?")]
        records = finished(rconn, ids)
    finally:
        fake.default = Reply(text=REPLY)
    for record in records:
        assert record["status"] == "failed"
        assert record["error"]["stage"] == "llm" and record["error"]["reason"] == "upstream_rate_limited"
        assert "gave up after" in record["error"]["message"]
    assert served(fake, since, 429) == 2 * 4  # the retry budget: 4 attempts per job
    # The same worker process is alive and answers the next job.
    assert stack.procs["worker-llm"].poll() is None and stack.procs["worker-llm"].pid == pid
    [after] = finished(rconn, [chat(client, "And now?")])
    assert after["status"] == "done" and after["results"]["llm"]["text"] == REPLY


def test_a_failing_server_is_told_apart_from_throttling(
    stack: Stack, fake: FakeOpenAI, client: httpx.Client, rconn: redis.Redis
) -> None:
    fake.default = Fail(503, message="overloaded")
    try:
        [record] = finished(rconn, [chat(client, "Hello?")])
    finally:
        fake.default = Reply(text=REPLY)
    assert record["status"] == "failed" and record["error"]["reason"] == "upstream_unavailable"
    [after] = finished(rconn, [chat(client, "Hello again?")])
    assert after["status"] == "done"


def test_edge_tts_throttled_for_good_falls_back_and_says_why(
    stack: Stack, edge: FakeEdge, client: httpx.Client, rconn: redis.Redis
) -> None:
    retries_before = retries(stack, "tts", "edge-tts")
    fallbacks_before = stack.metric("tts", "voicequeue_fallbacks_total", stage="tts", from_engine="edge")
    requests_before = edge.requests
    [record] = finished(rconn, [chat(client, "Say something.", speak=True)])
    assert record["status"] == "done"
    tts = record["results"]["tts"]
    assert tts["fallback"] is not None and tts["fallback"]["reason"] == "upstream_rate_limited"
    assert tts["engine"] != "edge" and tts["duration_s"] > 0.5
    tried = edge.requests - requests_before
    assert tried >= 2
    assert retries(stack, "tts", "edge-tts") >= retries_before + 1
    assert stack.metric("tts", "voicequeue_fallbacks_total", stage="tts", from_engine="edge") > fallbacks_before
    assert stack.procs["worker-tts"].poll() is None
