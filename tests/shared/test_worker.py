"""`shared.worker` against a real redis-server that goes away at the worst moments, with the worker's own classes.

1. A job taken off a queue just as Redis shuts down: Redis applies the take and writes it to its AOF, but
   the worker never hears the reply. A worker serving `<stage>:live` and `<stage>:batch` used rq's BLPOP
   for that, and the job was gone for good (its record said "running" forever; seen in CI,
   tests/reliability/test_redis_restart.py). With `shared.dequeue.MovingQueue` the job waits in the
   queue's intermediate list, and a reaper puts it back.
2. A job whose write fails because Redis went away while it ran is run again once Redis is back, in both
   worker modes, and completes (rq's Retry, `shared.queues._retry`; the stage counts the attempts).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from shared import jobs, queues, reaper
from shared.config import CommonSettings
from shared.stage import StageContext
from shared.worker import ForkingWorker, InProcessWorker, Running, Service, StageJob, ThreadWorker
from tests.stack import RedisServer

SETTINGS = CommonSettings()
REPLY = {"text": "answered after the restart"}
LLM_QUEUES = queues.names_for("llm")  # live and batch: the case rq took with BLPOP


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    s = RedisServer(data_dir).start()
    yield s
    s.stop()


def new_job(conn: redis.Redis) -> str:
    job_id = jobs.create(conn, kind="chat_text", priority="live", inputs={"text": "hi"}, options={}, ttl_s=600)
    queues.enqueue(conn, SETTINGS, job_id, "llm", "live")
    return job_id


def answering() -> Service[CommonSettings, None]:
    return Service(stage="llm", load=lambda settings: None, work=lambda ctx: REPLY)  # type: ignore[arg-type]


def resp(*args: str) -> bytes:
    """One Redis command in the wire protocol."""
    return f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args)


def blocked_takers(conn: redis.Redis) -> list[str]:
    return [c["cmd"] for c in conn.client_list() if "b" in c["flags"]]


def wait_done(conn: redis.Redis, job_id: str, timeout_s: float) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if jobs.status(conn, job_id) == "done":
            break
        time.sleep(0.1)
    return jobs.load(conn, job_id)


def test_a_job_taken_as_redis_shuts_down_waits_for_the_reaper_and_completes(server: RedisServer) -> None:
    conn = redis.Redis.from_url(server.url)
    job_id = new_job(conn)
    rq_id, live_key = queues.rq_job_id(job_id, "llm"), queues.rq_key(LLM_QUEUES[0])
    assert conn.lrem(live_key, 1, rq_id) == 1  # held back, to arrive in the same packet as the SHUTDOWN

    class Worker(ThreadWorker):
        running = Running(answering(), SETTINGS, None)

    worker = Worker(LLM_QUEUES, connection=conn, job_class=StageJob)
    worker.stop = threading.Event()
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    reaping = None
    try:
        deadline = time.monotonic() + 10
        while not blocked_takers(conn):
            assert time.monotonic() < deadline, "the worker never blocked waiting for a job"
            time.sleep(0.02)
        assert blocked_takers(conn) == ["blmove"]
        # Redis hands the job to the blocked worker, then shuts down before any reply leaves (this
        # connection's own reply to the push included).
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(resp("RPUSH", live_key, rq_id) + resp("SHUTDOWN"))
            assert server.proc is not None and server.proc.wait(10) == 0  # a clean shutdown: the AOF has it all
        server.start()
        assert conn.lrange(live_key, 0, -1) == []  # the push and the take were both applied and kept
        assert jobs.status(conn, job_id) == "queued"  # but the worker never heard of it
        assert Queue(LLM_QUEUES[0], connection=conn).intermediate_queue.get_job_ids() == [rq_id]

        reaping = reaper.Reaper(SETTINGS.model_copy(update={"redis_url": server.url}), LLM_QUEUES)
        reaping.start()
        record = wait_done(conn, job_id, timeout_s=reaper.STRANDED_S + 20)
    finally:
        if reaping is not None:
            reaping.stopped.set()
        worker.stop.set()
        thread.join(10)
    assert record is not None and record["status"] == "done", record
    assert record["results"]["llm"] == REPLY and record["stages"]["llm"]["attempts"] == 1


def test_a_worker_of_several_queues_takes_live_before_batch_and_clears_what_it_took(server: RedisServer) -> None:
    conn = redis.Redis.from_url(server.url)
    batch_id = jobs.create(conn, kind="chat_text", priority="batch", inputs={"text": "b"}, options={}, ttl_s=600)
    queues.enqueue(conn, SETTINGS, batch_id, "llm", "batch")
    live_id = new_job(conn)
    order: list[str] = []

    def work(ctx: StageContext[None]) -> dict[str, str]:
        order.append(ctx.job_id)
        return REPLY

    class Worker(InProcessWorker):
        running = Running(Service(stage="llm", load=lambda s: None, work=work), SETTINGS, None)

    Worker(LLM_QUEUES, connection=conn, job_class=StageJob).work(burst=True)

    assert order == [live_id, batch_id]
    for name in LLM_QUEUES:
        queue = Queue(name, connection=conn)
        assert queue.count == 0 and queue.intermediate_queue.get_job_ids() == []


class Restarter:
    """Starts the Redis a job shut down again once the job says its write failed (a flag file: the job may
    run in a forked process)."""

    def __init__(self, server: RedisServer, flag: Path) -> None:
        self.server, self.flag = server, flag
        self.restarts = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            proc = self.server.proc
            if proc is not None and proc.poll() is not None and self.flag.exists():
                self.server.start()
                self.restarts += 1
                self.flag.unlink()
            time.sleep(0.02)


def cut_off_once(flag: Path, url: str) -> Service[CommonSettings, None]:
    def work(ctx: StageContext[None]) -> dict[str, str]:
        if ctx.attempt > 1:
            return REPLY
        with contextlib.suppress(redis.ConnectionError):
            ctx.conn.shutdown()  # Redis writes its AOF and exits
        try:
            ctx.emit("llm.delta", {"text": "Of course", "index": 0})
        except redis.ConnectionError:
            flag.touch()
            _until_redis_answers(url)  # Redis is back before the worker looks at the error
            raise
        raise AssertionError("a write reached a Redis that was shut down")

    return Service(stage="llm", load=lambda settings: None, work=work)  # type: ignore[arg-type]


def _until_redis_answers(url: str) -> None:
    probe = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            probe.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
        finally:
            probe.connection_pool.disconnect()
    raise TimeoutError("Redis did not come back")


@pytest.mark.parametrize("worker_class", [InProcessWorker, ForkingWorker], ids=["in-process", "forking"])
def test_a_job_cut_off_by_a_redis_restart_runs_again_and_completes(
    server: RedisServer, tmp_path: Path, worker_class: type[InProcessWorker] | type[ForkingWorker]
) -> None:
    flag = tmp_path / "write-failed"
    conn = redis.Redis.from_url(server.url)
    job_id = new_job(conn)
    restarter = Restarter(server, flag)
    restarter.thread.start()

    class Worker(worker_class):  # type: ignore[valid-type,misc]
        running = Running(cut_off_once(flag, server.url), SETTINGS, None)

    try:
        Worker(LLM_QUEUES, connection=conn, job_class=StageJob).work(burst=True)
    finally:
        restarter.stop.set()
        restarter.thread.join()

    assert restarter.restarts == 1
    record = jobs.load(conn, job_id)
    assert record is not None and record["status"] == "done", record
    assert record["results"]["llm"] == REPLY and record["stages"]["llm"]["attempts"] == 2
    queue = Queue(LLM_QUEUES[0], connection=conn)
    assert FailedJobRegistry(queue=queue).get_job_ids() == []
    assert StartedJobRegistry(queue=queue).get_job_ids() == [] and queue.count == 0
