"""Running one stage of a job: the bookkeeping every worker shares.

A service supplies `work(ctx) -> result`; this module marks the stage running,
times it, stores the result, appends events and enqueues the plan's next stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from shared import events, jobs, metrics, queues
from shared.blobs import RedisBlobStore
from shared.config import CommonSettings

log = logging.getLogger(__name__)


class StageError(Exception):
    """A stage cannot finish for a stated reason (bad input, upstream exhausted). The job fails; the worker lives."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class StageContext:
    conn: redis.Redis
    settings: CommonSettings
    job: dict[str, Any]
    stage: str

    @property
    def job_id(self) -> str:
        return str(self.job["id"])

    @property
    def blobs(self) -> RedisBlobStore:
        return RedisBlobStore(self.conn)

    def emit(self, type_: str, data: dict[str, Any]) -> None:
        events.append(self.conn, self.job_id, type_, data, self.settings.job_ttl_s)

    def cancelled(self) -> bool:
        return jobs.status(self.conn, self.job_id) in (None, "cancelled")


Work = Callable[[StageContext], dict[str, Any]]


def run(stage: str, job_id: str, conn: redis.Redis, settings: CommonSettings, work: Work) -> None:
    record = jobs.load(conn, job_id)
    if record is None or record["status"] in jobs.TERMINAL_STATUSES:
        log.info("skipping stage", extra={"job_id": job_id, "stage": stage})
        return
    ctx = StageContext(conn, settings, record, stage)
    state = _start(ctx)
    try:
        result = work(ctx)
    except StageError as exc:
        _fail(ctx, state, exc.reason, exc.message)
        return
    except Exception as exc:  # a worker must never die on one job's input
        log.exception("stage crashed", extra={"job_id": job_id, "stage": stage})
        _fail(ctx, state, "internal_error", f"{type(exc).__name__}: {exc}")
        return
    if ctx.cancelled():
        return
    _finish(ctx, state, result)


def _start(ctx: StageContext) -> dict[str, Any]:
    now = time.time()
    state = dict(ctx.job["stages"].get(ctx.stage) or {})
    queued_at = state.get("queued_at", now)
    state.update(status="running", started_at=now, queue_wait_s=now - queued_at,
                 attempts=int(state.get("attempts", 0)) + 1)
    pipe = ctx.conn.pipeline()
    jobs.put_stage(pipe, ctx.job_id, ctx.stage, state)
    jobs.put_status(pipe, ctx.job_id, "running")
    events.append(pipe, ctx.job_id, "stage.started", {"stage": ctx.stage, "attempt": state["attempts"]},
                  ctx.settings.job_ttl_s)
    pipe.execute()
    metrics.observe(metrics.QUEUE_WAIT, state["queue_wait_s"], stage=ctx.stage, priority=ctx.job["priority"])
    return state


def _finish(ctx: StageContext, state: dict[str, Any], result: dict[str, Any]) -> None:
    now = time.time()
    state.update(status="done", finished_at=now, run_s=now - state["started_at"])
    nxt = jobs.next_stage(ctx.job["plan"], ctx.stage)
    pipe = ctx.conn.pipeline()
    jobs.put_stage(pipe, ctx.job_id, ctx.stage, state)
    jobs.put_result(pipe, ctx.job_id, ctx.stage, result)
    events.append(pipe, ctx.job_id, "stage.done",
                  {"stage": ctx.stage, "result": result, "run_s": state["run_s"]}, ctx.settings.job_ttl_s)
    if nxt is None:
        jobs.put_status(pipe, ctx.job_id, "done")
    pipe.execute()
    metrics.inc(metrics.JOBS, stage=ctx.stage, outcome="done")
    metrics.observe(metrics.STAGE_SECONDS, state["run_s"], stage=ctx.stage)
    if nxt is not None:
        audio_s = float(ctx.job["inputs"].get("duration_s") or 0.0)
        queues.enqueue(ctx.conn, ctx.settings, ctx.job_id, nxt, ctx.job["priority"], audio_s)
    else:
        final = jobs.load(ctx.conn, ctx.job_id)
        ctx.emit("job.done", {"job": final})


def _fail(ctx: StageContext, state: dict[str, Any], reason: str, message: str) -> None:
    now = time.time()
    error = {"stage": ctx.stage, "reason": reason, "message": message}
    state.update(status="failed", finished_at=now, run_s=now - state["started_at"], error=error)
    pipe = ctx.conn.pipeline()
    jobs.put_stage(pipe, ctx.job_id, ctx.stage, state)
    jobs.put_status(pipe, ctx.job_id, "failed", error)
    events.append(pipe, ctx.job_id, "stage.failed", error, ctx.settings.job_ttl_s)
    events.append(pipe, ctx.job_id, "job.failed", {"error": error}, ctx.settings.job_ttl_s)
    pipe.execute()
    metrics.inc(metrics.JOBS, stage=ctx.stage, outcome="failed")
    log.warning("stage failed", extra={"job_id": ctx.job_id, "stage": ctx.stage, "reason": reason})


def job_connection() -> redis.Redis:
    """The Redis connection of the rq job being performed (each stage task's entry point uses it)."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("not running inside an rq job")
    return job.connection
