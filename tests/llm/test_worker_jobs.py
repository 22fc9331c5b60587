"""One llm worker runs `VQ_LLM_WORKER_JOBS` replies at once (services/llm/worker.py, shared/worker.ThreadWorker).

The worker is a real process on a real Redis; the LLM is a real local HTTP server (tests/fakes/openai_server.py)
that takes `DELAY_S` to its first token, so the arrival times of the requests there show how many replies the
worker had in flight. A stopped worker finishes the replies it is running before it exits.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import started_stack
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.stack import Stack

JOBS = 3
DELAY_S = 2.0
REPLY = "Our opening hours are on our website."


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=Reply(text=REPLY, delay_s=DELAY_S)) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAI) -> Iterator[Stack]:
    env = {"VQ_LLM_ANSWER_CACHE": "false", "VQ_LLM_FAQ_PARAPHRASE": "false", "VQ_LLM_WORKER_JOBS": str(JOBS)}
    with started_stack(tmp_path_factory, "jobs", fake.base_url, env) as s:
        yield s


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield client


def ask(api: httpx.Client, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = api.post("/v1/chat", json={"text": f"Question number {i}: who are you?", "speak": False})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def wait_done(api: httpx.Client, ids: list[str], timeout_s: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = [api.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
        if all(r["status"] in ("done", "failed", "cancelled") for r in records):
            return records
        time.sleep(0.2)
    raise TimeoutError(f"jobs {ids} did not finish in {timeout_s} s")


def arrivals(fake: FakeOpenAI, since: float) -> list[float]:
    return sorted(r.at - since for r in fake.chat_requests if r.at >= since)


def test_one_worker_has_as_many_replies_in_flight_as_it_has_jobs_and_no_more(
    api: httpx.Client, fake: FakeOpenAI
) -> None:
    since = time.monotonic()
    records = wait_done(api, ask(api, JOBS + 1))
    assert [r["status"] for r in records] == ["done"] * (JOBS + 1), records
    assert all(r["results"]["llm"]["text"] == REPLY for r in records)
    at = arrivals(fake, since)
    assert len(at) == JOBS + 1, at
    # The first JOBS replies were asked for together; one at a time they would come DELAY_S apart.
    assert at[JOBS - 1] - at[0] < DELAY_S / 2, at
    # The next waited for a free job: never more than JOBS in flight.
    assert at[JOBS] - at[0] >= DELAY_S * 0.9, at


def test_a_stopped_worker_finishes_the_replies_it_is_running_then_exits(
    api: httpx.Client, fake: FakeOpenAI, stack: Stack
) -> None:
    since = time.monotonic()
    ids = ask(api, JOBS)
    deadline = time.monotonic() + 10
    while len(arrivals(fake, since)) < JOBS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(arrivals(fake, since)) == JOBS, "the replies never reached the LLM"
    worker = stack.procs["worker-llm"]
    worker.send_signal(signal.SIGTERM)
    try:
        assert worker.wait(DELAY_S + 15) == 0
        records = wait_done(api, ids, timeout_s=10)
        assert [r["status"] for r in records] == ["done"] * JOBS, records
        assert all(r["results"]["llm"]["text"] == REPLY for r in records)
        # Finished by the stopping worker, each asked once: not requeued and run again by another.
        assert len(arrivals(fake, since)) == JOBS
    finally:
        stack.respawn("worker-llm")
