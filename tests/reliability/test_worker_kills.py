"""Fault injection: kill -9 workers mid-job under load; every job still finishes, exactly once in effect.

One real stack (gateway, asr/llm/tts workers as processes, a real redis-server) with
a fake OpenAI server whose replies stream slowly enough (~1 s) for a kill to land
mid-stream. A killed worker is restarted at once, as compose or k8s would: recovery
then hinges on noticing the dead worker's job (heartbeat deadline
`worker_dead_after_s`, reaper sweep) and not on how many spare workers there are.

1. In-process workers (the default): kill the asr, the llm and the tts worker (the
   whole process group, as a container kill) while each is running a job, under 24
   turns through the gateway.
2. Forking workers (VQ_WORKER_FORK=true for llm and tts): kill the job process alone,
   the parent alone, and both, under 20 chat jobs.

For every job: done; one `stage.done` and one `job.done`; each stage re-run only if it
was a victim; `llm.delta` numbered 0..n-1 once each and adding up to the reply;
`tts.chunk` once per sentence; the reply audio as long as its sentences. Every victim
re-runs (or is finished) within 30 s of the kill.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from shared import events, jobs, queues, reaper
from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply
from tests.gateway.helpers import wav_duration
from tests.stack import RedisServer, Stack

REPLY = ("Sure, I can help with that. The weather today is mild and sunny, with a light breeze from the west "
         "and no rain expected. Please call again if you need anything else at all.")
CLIPS = ["en_short/librispeech-61-70968-0000.flac", "en_short/LDC93S1.wav", "en_short/10001-90210-01803.wav"]
RECOVERY_LIMIT_S = 30.0  # the promise in README.md and docs/reliability.md; also test_up_supervision.py
Event = tuple[float, str, dict[str, Any]]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=Reply(text=REPLY, delta_delay_s=0.03)) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAI) -> Iterator[Stack]:
    server = RedisServer(tmp_path_factory.mktemp("kills-redis")).start()
    s = Stack(server.url, tmp_path_factory.mktemp("kills-logs"))
    try:
        # No caches: every turn streams from the LLM and synthesises its sentences, so each worker is busy.
        yield s.start(llm_base_url=fake.base_url, extra_env={"VQ_LLM_ANSWER_CACHE": "false", "VQ_TTS_CACHE_TTL_S": "0"})
    finally:
        s.stop()
        server.stop()


@pytest.fixture
def rconn(stack: Stack) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(stack.redis_url)
    yield c
    c.close()


def job_events(conn: redis.Redis, job_id: str) -> list[Event]:
    """(server time in s, type, data) of every event of the job."""
    key = events.stream_key(job_id)
    return [(int(i.split("-")[0]) / 1000, t, d) for i, t, d in events.parse([(key, conn.xrange(key))])]


def running(conn: redis.Redis, queue_name: str) -> list[str]:
    """rq job ids in the queue's StartedJobRegistry (read without rq's cleanup, which would act on them)."""
    key = StartedJobRegistry(queue_name, connection=conn).key
    return [StartedJobRegistry.parse_job_id(e.decode() if isinstance(e, bytes) else str(e))
            for e in conn.zrange(key, 0, -1)]


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float = 60.0, every_s: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def streaming_llm_job(conn: redis.Redis) -> list[str]:
    """The llm stage jobs halfway through their reply (some deltas sent, not done)."""
    out = []
    for rq_id in running(conn, "llm:live"):
        types = [t for _, t, _ in job_events(conn, rq_id.rpartition("_")[0])]
        if types.count("llm.delta") >= 3 and "llm.done" not in types:
            out.append(rq_id)
    return out


def recovery_s(conn: redis.Redis, rq_id: str, killed_at: float) -> float:
    """Seconds from the kill until the victim ran again (a stage started anew) or its work was stored."""
    job_id, _, part = rq_id.rpartition("_")
    evs = job_events(conn, job_id)
    if part.startswith("tts") and part != "tts":
        seq = int(part[3:])
        times = [t for t, typ, d in evs if typ in ("tts.chunk", "tts.chunk_failed") and d["seq"] == seq]
    else:
        times = [t for t, typ, d in evs if (typ == "stage.started" and d["stage"] == part and t >= killed_at)
                 or (typ == "stage.done" and d["stage"] == part)]
    assert times, f"{rq_id} never ran again after the kill"
    return max(0.0, min(times) - killed_at)


class Kills:
    """The kills of one scenario: victims (rq job ids) and when they were hit."""

    def __init__(self) -> None:
        self.victims: list[tuple[str, str, float]] = []  # (what, rq id, killed at)

    def add(self, what: str, rq_ids: list[str], killed_at: float) -> None:
        assert rq_ids, f"{what}: nothing was running"
        self.victims.extend((what, rq_id, killed_at) for rq_id in rq_ids)

    def job_ids(self) -> set[str]:
        return {rq_id.rpartition("_")[0] for _, rq_id, _ in self.victims}

    def recoveries(self, conn: redis.Redis) -> dict[str, float]:
        return {f"{what} {rq_id.rpartition('_')[2]}": round(recovery_s(conn, rq_id, at), 2)
                for what, rq_id, at in self.victims}


def kill_in_process(stack: Stack, conn: redis.Redis, name: str, victims: Callable[[], list[str]], queue: str,
                    kills: Kills) -> None:
    rq_ids = wait_for(f"{name} busy", victims)
    killed_at = time.time()
    stack.kill(name)
    assert set(rq_ids) <= set(running(conn, queue)), "the job finished before the kill landed"
    kills.add(name, rq_ids, killed_at)
    stack.respawn(name)


def wait_done(conn: redis.Redis, ids: list[str], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = [jobs.status(conn, i) for i in ids]
        if all(s in jobs.TERMINAL_STATUSES for s in statuses):
            return
        time.sleep(0.25)
    pending = {i: jobs.status(conn, i) for i in ids if jobs.status(conn, i) not in jobs.TERMINAL_STATUSES}
    raise AssertionError(f"{len(pending)} jobs never finished: {pending}")


def check_exactly_once(stack: Stack, conn: redis.Redis, ids: list[str], victims: set[str]) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        for job_id in ids:
            record = jobs.load(conn, job_id)
            assert record is not None and record["status"] == "done", (job_id, record and record["error"])
            evs = job_events(conn, job_id)
            types = [t for _, t, _ in evs]
            assert types.count("job.done") == 1 and "job.failed" not in types
            for stage in record["plan"]:
                done = [d for _, t, d in evs if t == "stage.done" and d["stage"] == stage]
                starts = [d["attempt"] for _, t, d in evs if t == "stage.started" and d["stage"] == stage]
                assert len(done) == 1, f"{job_id}: {len(done)} stage.done for {stage}"
                assert starts == list(range(1, len(starts) + 1)) == list(range(1, record["stages"][stage]["attempts"]
                                                                              + 1))
                if job_id not in victims:
                    assert starts == [1], f"{job_id}: {stage} ran {len(starts)} times but was no victim"
                assert record["stages"][stage]["status"] == "done"
            partials = [d["index"] for _, t, d in evs if t == "asr.partial"]
            assert partials == list(range(len(partials)))
            deltas = [d for _, t, d in evs if t == "llm.delta"]
            assert [d["index"] for d in deltas] == list(range(len(deltas)))
            reply = record["results"]["llm"]["text"]
            assert "".join(d["text"] for d in deltas) == reply == REPLY
            sentences = record["results"]["llm"]["chunks"]
            assert len(sentences) >= 2 and "".join(c["text"] for c in sentences).replace(" ", "") == \
                REPLY.replace(" ", "")
            announced = [d["seq"] for _, t, d in evs if t == "tts.chunk"]
            assert announced == list(range(len(sentences))), f"{job_id}: tts.chunk seqs {announced}"
            assert [c["seq"] for c in record["chunks"]] == announced
            assert len(record["results"]["tts"]["chunks"]) == len(sentences)
            audio = client.get(f"/v1/jobs/{job_id}/audio")
            assert audio.status_code == 200
            assert wav_duration(audio.content) == pytest.approx(sum(c["duration_s"] for c in record["chunks"]),
                                                                abs=0.05)
    for name in queues.all_names():  # nothing left behind, nothing failed in rq's eyes, no duplicate waiting
        assert Queue(name, connection=conn).count == 0, name
        assert running(conn, name) == [], name
        failed = FailedJobRegistry(name, connection=conn).get_job_ids(cleanup=False)
        assert failed == [], [(i, (r := Job.fetch(i, connection=conn).latest_result()) and r.exc_string)
                              for i in failed]


def submit_turns(stack: Stack, speech: Path, n: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        for i in range(n):
            path = speech / CLIPS[i % len(CLIPS)]
            with path.open("rb") as f:
                r = client.post("/v1/turns", files={"file": (path.name, f)})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
    return ids


def submit_chats(stack: Stack, n: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        for i in range(n):
            r = client.post("/v1/chat", json={"text": f"What is the weather like today, question {i}?"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
    return ids


def replies(fake: FakeOpenAI) -> list[Recorded]:
    """The streamed reply requests: a turn whose words could mean an action (a "complaint") also asks the
    model for a decision first (services/llm/guided.py), which is not a reply."""
    return [r for r in fake.chat_requests if r.body.get("stream")]


def test_kill_each_in_process_worker_mid_job(stack: Stack, rconn: redis.Redis, fake: FakeOpenAI,
                                            speech: Path) -> None:
    calls_before = len(replies(fake))
    ids = submit_turns(stack, speech, 24)
    kills = Kills()
    kill_in_process(stack, rconn, "worker-asr", lambda: running(rconn, "asr:live"), "asr:live", kills)
    kill_in_process(stack, rconn, "worker-llm", lambda: streaming_llm_job(rconn), "llm:live", kills)
    kill_in_process(stack, rconn, "worker-tts", lambda: running(rconn, "tts:live"), "tts:live", kills)
    wait_done(rconn, ids)
    recoveries = kills.recoveries(rconn)
    print("recovery seconds (in-process):", json.dumps(recoveries))
    assert all(s <= RECOVERY_LIMIT_S for s in recoveries.values()), recoveries
    check_exactly_once(stack, rconn, ids, kills.job_ids())
    # One reply per turn, plus one for the reply cut off by the kill.
    assert len(replies(fake)) - calls_before == len(ids) + 1


def test_kill_forked_job_process_parent_and_both(stack: Stack, rconn: redis.Redis, fake: FakeOpenAI) -> None:
    for name in ("worker-llm", "worker-tts"):
        stack.stop_worker(name)
        stack.respawn(name, env={"VQ_WORKER_FORK": "true"})
    calls_before = len(replies(fake))
    ids = submit_chats(stack, 20)
    kills = Kills()

    # The job process alone: its parent sees it die and puts the job back at once (rq Retry).
    rq_ids = wait_for("llm mid-reply (fork)", lambda: streaming_llm_job(rconn) if stack.job_process("worker-llm")
                      else [])
    horse = stack.job_process("worker-llm")
    assert horse is not None
    killed_at = time.time()
    os.kill(horse, 9)
    kills.add("llm job process", rq_ids, killed_at)

    # The parent alone: its job process dies with it (PR_SET_PDEATHSIG); the reaper requeues the job.
    rq_ids = wait_for("tts busy (fork)", lambda: running(rconn, "tts:live") if stack.job_process("worker-tts")
                      else [])
    horse = stack.job_process("worker-tts")
    assert horse is not None
    killed_at = time.time()
    stack.kill("worker-tts", group=False)
    kills.add("tts parent", rq_ids, killed_at)
    wait_for("the orphaned job process to die", lambda: not psutil.pid_exists(horse)
             or psutil.Process(horse).status() == psutil.STATUS_ZOMBIE, timeout_s=5)
    stack.respawn("worker-tts")

    # Both, as a container kill.
    rq_ids = wait_for("llm mid-reply again (fork)", lambda: [r for r in streaming_llm_job(rconn)
                                                              if r not in {v for _, v, _ in kills.victims}]
                      if stack.job_process("worker-llm") else [])
    horse = stack.job_process("worker-llm")
    assert horse is not None
    killed_at = time.time()
    stack.kill("worker-llm")
    os.kill(horse, 9)
    kills.add("llm parent+job process", rq_ids, killed_at)
    stack.respawn("worker-llm")

    wait_done(rconn, ids)
    recoveries = kills.recoveries(rconn)
    print("recovery seconds (fork):", json.dumps(recoveries))
    assert all(s <= RECOVERY_LIMIT_S for s in recoveries.values()), recoveries
    check_exactly_once(stack, rconn, ids, kills.job_ids())
    assert len(replies(fake)) - calls_before == len(ids) + 2  # two replies were cut off


def test_two_reapers_requeue_an_abandoned_job_once(conn: redis.Redis) -> None:
    """The requeue is one WATCHed transaction: racing reapers enqueue the job once between them."""
    queue = Queue("llm:live", connection=conn)
    job = queue.enqueue(queues.STAGE_TASK, "some-job", job_id="some-job_llm")
    assert queue.pop_job_id() == job.id  # as a worker took it…
    job.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry("llm:live", connection=conn)
    conn.zadd(registry.key, {f"{job.id}:exec1": time.time() - 1})  # …and died: its heartbeat deadline passed
    results: list[list[str]] = []
    barrier = threading.Barrier(4)

    def reap() -> None:
        c = redis.Redis(connection_pool=conn.connection_pool)
        barrier.wait()
        results.append(reaper.sweep(c, ["llm:live"]))

    threads = [threading.Thread(target=reap) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert queue.get_job_ids() == [job.id]
    assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.QUEUED
    assert conn.zcard(registry.key) == 0
    # A job whose worker still beats is left alone.
    conn.zadd(registry.key, {"other_llm:exec2": time.time() + 10})
    assert reaper.sweep(conn, ["llm:live"]) == [] and conn.zcard(registry.key) == 1


def test_a_job_whose_worker_died_between_dequeue_and_start_is_requeued(conn: redis.Redis) -> None:
    """A forking worker registers the execution, then forks; the job process marks the job started. Killed in
    between, the job is in no queue and still 'queued': it must be put back, once."""
    queue = Queue("tts:live", connection=conn)
    job = queue.enqueue(queues.STAGE_TASK, "lost-job", job_id="lost-job_tts0")
    assert queue.pop_job_id() == job.id  # dequeued, never started
    registry = StartedJobRegistry("tts:live", connection=conn)
    conn.zadd(registry.key, {f"{job.id}:exec1": time.time() - 1})
    assert reaper.sweep(conn, ["tts:live"]) == [job.id]
    assert queue.get_job_ids() == [job.id] and conn.zcard(registry.key) == 0
    # Still in its queue (a stale entry, nothing lost): the entry goes, the job is not queued twice.
    conn.zadd(registry.key, {f"{job.id}:exec2": time.time() - 1})
    assert reaper.sweep(conn, ["tts:live"]) == []
    assert queue.get_job_ids() == [job.id] and conn.zcard(registry.key) == 0


def _chat_job(conn: redis.Redis) -> str:
    return jobs.create(conn, kind="chat", priority="live", inputs={"text": "hi"}, options={}, ttl_s=60)


def test_a_stage_whose_worker_keeps_dying_fails_with_its_budget_spent(conn: redis.Redis) -> None:
    from shared import stage
    from shared.config import CommonSettings

    settings = CommonSettings(stage_max_attempts=5, stage_max_attempts_per_stage={"llm": 2})
    assert (settings.max_attempts("llm"), settings.max_attempts("tts")) == (2, 5)
    job_id = _chat_job(conn)
    queues.enqueue(conn, settings, job_id, "llm", "live")
    ran: list[int] = []

    def dies(ctx: stage.StageContext) -> dict[str, Any]:
        ran.append(ctx.attempt)
        raise redis.ConnectionError("stands in for SIGKILL: nothing after this point is recorded")

    for _ in range(2):
        with pytest.raises(redis.ConnectionError):
            stage.run("llm", job_id, conn, settings, dies)
    stage.run("llm", job_id, conn, settings, dies)  # a third delivery: the budget of 2 is spent
    assert ran == [1, 2]
    record = jobs.load(conn, job_id)
    assert record is not None and record["status"] == "failed"
    assert record["error"]["stage"] == "llm" and record["error"]["reason"] == "retry_budget_exhausted"
    assert "started 2 times" in record["error"]["message"]
    types = [t for _, t, _ in job_events(conn, job_id)]
    assert types == ["stage.started", "stage.started", "stage.failed", "job.failed"]
    assert Queue("tts:live", connection=conn).count == 0


def test_a_rerun_after_the_result_was_stored_only_passes_the_job_on(conn: redis.Redis) -> None:
    """Killed between storing its result and enqueueing the next stage: the re-run enqueues it, once."""
    from shared import stage
    from shared.config import CommonSettings

    settings = CommonSettings()
    job_id = _chat_job(conn)
    queues.enqueue(conn, settings, job_id, "llm", "live")
    stage.run("llm", job_id, conn, settings, lambda ctx: {"text": "hello"})
    conn.hdel(jobs.key(job_id), "enq:tts", "stage:tts")  # as if it had died before the hand-off…
    Queue("tts:live", connection=conn).empty()
    calls: list[int] = []

    def work(ctx: stage.StageContext) -> dict[str, Any]:
        calls.append(ctx.attempt)
        return {"text": "other"}

    for _ in range(2):  # …and was delivered again, twice
        stage.run("llm", job_id, conn, settings, work)
    assert calls == []  # the stored result stands; the work is not redone
    record = jobs.load(conn, job_id)
    assert record is not None and record["results"]["llm"] == {"text": "hello"}
    assert Queue("tts:live", connection=conn).get_job_ids() == [queues.rq_job_id(job_id, "tts")]
    types = [t for _, t, _ in job_events(conn, job_id)]
    assert types.count("stage.done") == 1 and types.count("stage.started") == 1
