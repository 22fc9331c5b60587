"""Atomic admission: the queue-depth check and the enqueue are one step, and Retry-After tells the truth.

Real gateway processes on their own Redis. Without a worker nothing leaves the queue, so of 50
submissions racing for a depth limit of 10 exactly 10 may get in; with a real llm worker draining
it, a refusal's Retry-After, waited out, gets the submission accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.llm.config import LlmSettings
from shared import run_times
from tests.conftest import running_redis
from tests.gateway.helpers import read_sse
from tests.reliability.partial import llm_server, partial_stack
from tests.stack import Stack

NO_RATE_LIMIT = {"VQ_RATE_LIMIT_PER_S": "0"}


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway with no workers: every accepted job stays queued."""
    env = {**NO_RATE_LIMIT, "VQ_MAX_QUEUE_DEPTH_LIVE": "10"}
    with running_redis(tmp_path_factory.mktemp("admit-redis")) as url, \
            partial_stack(url, tmp_path_factory.mktemp("admit-logs"), (), env) as s:
        yield s


async def _race(base_url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60,
                                 limits=httpx.Limits(max_connections=n)) as client:
        start = asyncio.Event()

        async def one(i: int) -> httpx.Response:
            await start.wait()
            return await client.post("/v1/chat", json={"text": f"question number {i}", "speak": False})

        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        await asyncio.sleep(0.2)
        start.set()
        return list(await asyncio.gather(*tasks))


def test_50_concurrent_submissions_against_a_limit_of_10_accept_exactly_10(idle: Stack) -> None:
    db = redis.Redis.from_url(idle.redis_url)
    answers = asyncio.run(_race(idle.base_url, 50))
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(202) == 10, statuses
    assert statuses.count(429) == 40, statuses
    for refused in (r for r in answers if r.status_code == 429):
        assert refused.json()["error"]["code"] == "queue_full", refused.text
        assert "llm:live" in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
    assert db.llen("rq:queue:llm:live") == 10
    accepted = {r.json()["id"] for r in answers if r.status_code == 202}
    # A refusal leaves nothing behind: only the accepted jobs have records and event streams.
    records = {k.decode().rsplit(":", 1)[-1] for k in db.scan_iter("vq:job:*") if db.type(k) == b"hash"}
    assert records == accepted
    db.delete("rq:queue:llm:live")
    assert httpx.post(f"{idle.base_url}/v1/chat", json={"text": "room again", "speak": False}).status_code == 202


def test_retry_after_grows_with_recent_run_times_and_depth(idle: Stack) -> None:
    db = redis.Redis.from_url(idle.redis_url)
    db.delete("rq:queue:llm:live", run_times.key("llm:live"))
    for i in range(10):
        assert httpx.post(f"{idle.base_url}/v1/chat", json={"text": f"fill {i}", "speak": False}).status_code == 202
    unknown = httpx.post(f"{idle.base_url}/v1/chat", json={"text": "one more", "speak": False})
    assert unknown.status_code == 429 and unknown.headers["Retry-After"] == "5"  # no run times yet: the setting
    for _ in range(5):
        run_times.record(db, "llm:live", 7.2)
    measured = httpx.post(f"{idle.base_url}/v1/chat", json={"text": "one more", "speak": False})
    assert measured.headers["Retry-After"] == "8"  # one job over the limit, 7.2 s each, one worker at most
    for i in range(3):  # past the limit by hand (as a batch or an operator might): more to drain first
        db.rpush("rq:queue:llm:live", f"extra{i}")
    deeper = httpx.post(f"{idle.base_url}/v1/chat", json={"text": "one more", "speak": False})
    assert deeper.headers["Retry-After"] == "29"  # 4 jobs to take before there is room: 4 x 7.2 s
    assert "13 jobs (limit 10)" in deeper.json()["error"]["message"]
    db.delete("rq:queue:llm:live", run_times.key("llm:live"))


@pytest.fixture(scope="module")
def draining(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway and one real llm worker (a llama.cpp server of its own), queue limit 2."""
    with llm_server(tmp_path_factory.mktemp("drain-llm")) as llm:
        env = {**NO_RATE_LIMIT, "VQ_MAX_QUEUE_DEPTH_LIVE": "2", "VQ_LLM_BASE_URL": llm,
               "VQ_LLM_MAX_TOKENS": "8", "VQ_LLM_TEMPERATURE": "0"}
        with running_redis(tmp_path_factory.mktemp("drain-redis")) as url, \
                partial_stack(url, tmp_path_factory.mktemp("drain-logs"), ("llm",), env) as s:
            yield s


def taken_by_the_worker(c: httpx.Client, status_url: str, timeout_s: float = 120) -> None:
    """Until the job has left its queue. A worker still starting up takes a moment to pick up its first jobs."""
    import time

    deadline = time.monotonic() + timeout_s
    while c.get(status_url).json()["status"] == "queued":
        assert time.monotonic() < deadline, "the worker never took the job"
        time.sleep(0.05)


def test_a_refusal_retry_after_honoured_gets_the_turn_accepted(draining: Stack, tmp_path: Path) -> None:
    import time

    with httpx.Client(base_url=draining.base_url, timeout=120) as c:
        # Some recent run times to estimate from, taken as the refused turns will run: as many at once as the
        # worker runs (one per server slot). A job run alone is faster, and the estimate would be too short.
        first = []
        for i in range(LlmSettings().llm_worker_jobs):
            r = c.post("/v1/chat", json={"text": f"Say hello number {i}.", "speak": False})
            assert r.status_code == 202, r.text
            first.append(r.json())
            taken_by_the_worker(c, r.json()["status_url"])  # so the queue never fills: the worker has room
        assert all(read_sse(c, links["events_url"])[-1]["event"] == "job.done" for links in first)
        honoured, waits = 0, []
        for i in range(2):
            refused = None
            for j in range(10):
                r = c.post("/v1/chat", json={"text": f"Round {i}, say yes {j}.", "speak": False})
                if r.status_code == 429:
                    refused = r
                    break
                assert r.status_code == 202, r.text
            assert refused is not None, "the queue never filled"
            assert refused.json()["error"]["code"] == "queue_full"
            wait = int(refused.headers["Retry-After"])
            assert 1 <= wait <= 120  # one job's run time, on a busy machine
            waits.append(wait)
            time.sleep(wait)
            again = c.post("/v1/chat", json={"text": f"Round {i}, after waiting.", "speak": False})
            assert again.status_code == 202, (wait, again.text)
            honoured += 1
        print(f"\nRetry-After honoured: {waits} s")
        assert honoured == 2
