"""Redis restarts: every job answered 202 is still there afterwards and completes; no process dies.

The redis-server runs as in production (AOF, `appendfsync everysec`) and comes back
on the same port with the same data directory. First a crash (SIGKILL) with jobs
waiting in the queues: acknowledgements older than the one-second fsync window
survive it. Then a graceful restart (SIGTERM: Redis writes its AOF out first) while
the workers are busy: the job cut off mid-stage is re-run, everything completes, and
the gateway and the workers reconnect on their own: once Redis listens again, the gateway
answers no 5xx at all (its pooled connections to the old Redis are retried on fresh ones).
While Redis is down, a request already admitted gets a clean 503 `redis_unavailable` with
Retry-After and the documented error body, never a bare 500.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared import events, jobs
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.stack import RedisServer, Stack

REPLY = "Of course. Your order left the warehouse this morning and should arrive tomorrow."


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=Reply(text=REPLY, delta_delay_s=0.03)) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path_factory.mktemp("restart-redis")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAI, server: RedisServer) -> Iterator[Stack]:
    s = Stack(server.url, tmp_path_factory.mktemp("restart-logs"))
    try:
        yield s.start(llm_base_url=fake.base_url, extra_env={"VQ_LLM_ANSWER_CACHE": "false"})
    finally:
        s.stop()


def statuses(url: str, ids: list[str]) -> dict[str, str | None]:
    conn = redis.Redis.from_url(url)
    try:
        return {i: jobs.status(conn, i) for i in ids}
    finally:
        conn.close()


def call_redis_up(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """A request made while Redis is up (maybe just restarted): it must not get any 5xx."""
    r = client.request(method, url, **kwargs)
    assert r.status_code < 500, (r.status_code, r.text)
    return r


def wait_all_done(url: str, ids: list[str], timeout_s: float = 150.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if all(s == "done" for s in statuses(url, ids).values()):
                return
        except redis.ConnectionError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not all done: {statuses(url, ids)}")


def test_jobs_survive_a_redis_crash_and_a_restart_mid_work(
    stack: Stack, server: RedisServer, speech: Path
) -> None:
    survivors = {name: stack.procs[name].pid for name in ("gateway", "worker-asr", "worker-tts")}
    stack.stop_worker("worker-llm")  # the replies wait in llm:live
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        ids = []
        for i in range(12):
            r = client.post("/v1/chat", json={"text": f"Can you help me with account number {i}?"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        clip = speech / "en_short/LDC93S1.wav"
        for _ in range(3):
            with clip.open("rb") as f:
                r = client.post("/v1/turns", files={"file": (clip.name, f)})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        conn = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 60
        while conn.llen("rq:queue:llm:live") < len(ids) and time.monotonic() < deadline:  # turns pass ASR first
            time.sleep(0.2)
        assert conn.llen("rq:queue:llm:live") == len(ids)
        conn.close()

        time.sleep(1.5)  # past the AOF's one-second fsync window
        server.stop(9)  # a crash
        server.start()
        conn = redis.Redis.from_url(server.url)
        assert conn.llen("rq:queue:llm:live") == len(ids)  # every acknowledged job is still waiting
        assert all(s in ("queued", "running") for s in statuses(server.url, ids).values())  # turns: past asr
        conn.close()
        r = call_redis_up(client, "GET", f"/v1/jobs/{ids[0]}")  # the gateway reconnects by itself
        assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["id"] == ids[0]

        stack.respawn("worker-llm")
        wait_for_some_done = time.monotonic() + 60
        while sum(s == "done" for s in statuses(server.url, ids).values()) < 3:
            assert time.monotonic() < wait_for_some_done, "no job finished after the crash"
            time.sleep(0.1)
        server.stop(15)  # a graceful restart, in the middle of the work
        time.sleep(1.0)
        server.start()

        wait_all_done(server.url, ids)
        conn = redis.Redis.from_url(server.url)
        for job_id in ids:
            evs = events.parse([(events.stream_key(job_id), conn.xrange(events.stream_key(job_id)))])
            types = [t for _, t, _ in evs]
            assert types.count("job.done") == 1, job_id
            record = jobs.load(conn, job_id)
            assert record is not None and record["results"]["llm"]["text"] == REPLY
            assert record["results"]["tts"]["duration_s"] > 1.0
        conn.close()
        r = call_redis_up(client, "POST", "/v1/chat", json={"text": "One more?", "speak": False})
        assert r.status_code == 202
        wait_all_done(server.url, [r.json()["id"]])
    for name, pid in survivors.items():  # nobody died of the restarts
        assert stack.procs[name].poll() is None and stack.procs[name].pid == pid, name
    assert stack.procs["worker-llm"].poll() is None


def test_redis_lost_after_admission_is_a_clean_503(stack: Stack, server: RedisServer) -> None:
    """Redis dies while an admitted request's body is still arriving: 503 with the error body and
    Retry-After (not a bare 500); once Redis is back the same request is accepted."""
    body = b'{"text": "Is my parcel on its way?", "speak": false}'

    def arriving() -> Iterator[bytes]:
        yield body[:10]
        time.sleep(0.3)  # the gateway has admitted the request (tenant, rate, queue depth) by now
        server.stop(9)
        assert server.proc is not None
        server.proc.wait(10)
        yield body[10:]

    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        headers = {"content-type": "application/json"}
        r = client.post("/v1/chat", content=arriving(), headers=headers)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "redis_unavailable" and r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) >= 1
        down = client.get("/v1/jobs/nope")  # a request arriving while Redis is down: the same answer
        assert down.status_code == 503 and down.json()["error"]["code"] == "redis_unavailable"
        server.start()
        again = call_redis_up(client, "POST", "/v1/chat", content=body, headers=headers)
        assert again.status_code == 202, again.text
        wait_all_done(server.url, [again.json()["id"]])
