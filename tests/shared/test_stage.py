"""The stage runner and job record against a real Redis: results, events, next-stage hand-off, failures."""

from __future__ import annotations

import pytest
import redis
from rq import Queue

from shared import events, jobs, metrics, queues, stage
from shared.config import CommonSettings

SETTINGS = CommonSettings()


def _job(conn: redis.Redis, kind: str = "chat") -> str:
    return jobs.create(conn, kind=kind, priority="live", inputs={"text": "hi"}, options={}, ttl_s=60)


def test_stage_done_enqueues_next_once(conn: redis.Redis) -> None:
    job_id = _job(conn)
    queues.enqueue(conn, SETTINGS, job_id, "llm", "live")
    stage.run("llm", job_id, conn, SETTINGS, lambda ctx: {"text": "hello"})
    record = jobs.load(conn, job_id)
    assert record is not None
    assert record["results"]["llm"] == {"text": "hello"}
    assert record["stages"]["llm"]["status"] == "done" and record["stages"]["llm"]["attempts"] == 1
    assert record["stages"]["tts"]["status"] == "queued"
    assert Queue("tts:live", connection=conn).count == 1
    # A re-run (say after a worker died after finishing) must not enqueue the next stage twice.
    assert queues.enqueue(conn, SETTINGS, job_id, "tts", "live") is False
    assert Queue("tts:live", connection=conn).count == 1
    types = [(t, d.get("stage")) for _, t, d in events.read(conn, job_id)]
    assert types == [("stage.started", "llm"), ("stage.done", "llm")]


def test_last_stage_finishes_job_with_result_in_event(conn: redis.Redis) -> None:
    job_id = _job(conn, "chat_text")
    stage.run("llm", job_id, conn, SETTINGS, lambda ctx: {"text": "bye"})
    assert jobs.status(conn, job_id) == "done"
    final = events.read(conn, job_id)[-1]
    assert final[1] == "job.done" and final[2]["job"]["results"]["llm"]["text"] == "bye"


@pytest.mark.parametrize("error,reason", [(stage.StageError("bad_input", "nope"), "bad_input"),
                                          (ZeroDivisionError("boom"), "internal_error")])
def test_failures_are_recorded(conn: redis.Redis, error: Exception, reason: str) -> None:
    job_id = _job(conn)
    failed_before = metrics.JOBS.labels(stage="llm", outcome="failed")._value.get()

    def work(ctx: stage.StageContext) -> dict:
        raise error

    stage.run("llm", job_id, conn, SETTINGS, work)
    record = jobs.load(conn, job_id)
    assert record is not None and record["status"] == "failed"
    assert record["error"]["stage"] == "llm" and record["error"]["reason"] == reason
    assert Queue("tts:live", connection=conn).count == 0
    assert [t for _, t, _ in events.read(conn, job_id)][-1] == "job.failed"
    assert metrics.JOBS.labels(stage="llm", outcome="failed")._value.get() == failed_before + 1


def test_cancelled_job_is_skipped(conn: redis.Redis) -> None:
    job_id = _job(conn)
    jobs.put_status(conn, job_id, "cancelled")
    ran = []
    stage.run("llm", job_id, conn, SETTINGS, lambda ctx: ran.append(1) or {})
    assert ran == []


def test_metrics_from_forked_process_reach_parent(conn: redis.Redis) -> None:
    before = metrics.RETRIES.labels(service="t", cause="429")._value.get()
    metrics.start_buffering()
    metrics.inc(metrics.RETRIES, 2, service="t", cause="429")
    assert metrics.RETRIES.labels(service="t", cause="429")._value.get() == before  # held back
    metrics.flush(conn, "w1")
    metrics._buffer = None
    metrics.drain(conn, "w1")
    assert metrics.RETRIES.labels(service="t", cause="429")._value.get() == before + 2


def test_timeout_scales_with_duration() -> None:
    assert queues.timeout_s(SETTINGS, 600) > queues.timeout_s(SETTINGS, 10) > queues.timeout_s(SETTINGS, 0) - 1
    assert queues.timeout_s(SETTINGS, 3600) >= 3600
