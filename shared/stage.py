"""Running one stage of a job: the bookkeeping every worker shares.

A service supplies `work(ctx) -> result`; this module marks the stage running,
times it, stores the result, appends events and enqueues the plan's next stage.

At-least-once: a stage whose worker died is run again (`shared.reaper`). Each run
is an attempt counted in the stage's record; past `settings.max_attempts(stage)`
the job fails with "retry_budget_exhausted". A re-run overwrites the stage's
result; storing it and announcing `stage.done` happen once (a run that finds the
stage already done only passes the job on, which is itself idempotent). Events a
service sends as it goes can be checked against the earlier attempts' with
`ctx.earlier(type)` so listeners do not get them twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from shared import events, jobs, logs, metrics, queues
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
    attempt: int = 1
    _earlier: list[events.Event] | None = field(default=None, repr=False)

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

    def earlier(self, type_: str) -> list[dict[str, Any]]:
        """The data of the `type_` events earlier attempts of this job already sent (none on a first run)."""
        if self.attempt <= 1:
            return []
        if self._earlier is None:
            self._earlier = events.parse([(events.stream_key(self.job_id),
                                           self.conn.xrange(events.stream_key(self.job_id)))])
        return [data for _id, type_seen, data in self._earlier if type_seen == type_]

    def emit_once(self, type_: str, data: dict[str, Any]) -> None:
        """`emit`, unless an earlier attempt already sent this event type."""
        if not self.earlier(type_):
            self.emit(type_, data)


Work = Callable[[StageContext], dict[str, Any]]


def run(stage: str, job_id: str, conn: redis.Redis, settings: CommonSettings, work: Work) -> None:
    with logs.context(job_id=job_id, stage=stage):  # every log line of the stage names its job
        _run(stage, job_id, conn, settings, work)


def _run(stage: str, job_id: str, conn: redis.Redis, settings: CommonSettings, work: Work) -> None:
    record = jobs.load(conn, job_id)
    if record is not None:
        logs.bind(tenant=record["tenant"])
    if record is None or record["status"] in jobs.TERMINAL_STATUSES:
        log.info("skipping stage", extra={"job_id": job_id, "stage": stage})
        return
    ctx = StageContext(conn, settings, record, stage)
    before = record["stages"].get(stage) or {}
    if before.get("status") == "done":
        # The last attempt stored its result, then died before passing the job on.
        _pass_on(ctx)
        return
    if int(before.get("attempts", 0)) >= settings.max_attempts(stage):
        _fail(ctx, {**before, "started_at": time.time()}, "retry_budget_exhausted",
              f"the {stage} stage was started {before.get('attempts')} times and never finished (its worker "
              f"died each time); the budget is {settings.max_attempts(stage)}")
        return
    state = _start(ctx)
    try:
        result = work(ctx)
    except StageError as exc:
        _fail(ctx, state, exc.reason, exc.message)
        return
    except (redis.ConnectionError, redis.TimeoutError):
        raise  # Redis is away: nothing can be recorded; rq and the reaper run the stage again
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
    ctx.attempt = state["attempts"]
    pipe = ctx.conn.pipeline()
    jobs.put_stage(pipe, ctx.job_id, ctx.stage, state)
    jobs.put_status(pipe, ctx.job_id, "running")
    events.append(pipe, ctx.job_id, "stage.started", {"stage": ctx.stage, "attempt": state["attempts"]},
                  ctx.settings.job_ttl_s)
    pipe.execute()
    if ctx.attempt > 1:
        metrics.inc(metrics.STAGE_RERUNS, stage=ctx.stage)
        log.warning("stage re-run", extra={"job_id": ctx.job_id, "stage": ctx.stage, "attempt": ctx.attempt})
    else:
        metrics.observe(metrics.QUEUE_WAIT, state["queue_wait_s"], stage=ctx.stage, priority=ctx.job["priority"])
    return state


def _finish(ctx: StageContext, state: dict[str, Any], result: dict[str, Any]) -> None:
    now = time.time()
    state.update(status="done", finished_at=now, run_s=now - state["started_at"])
    key = jobs.key(ctx.job_id)
    with ctx.conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                stored = pipe.hget(key, f"stage:{ctx.stage}")
                if stored is not None and json.loads(stored).get("status") == "done":
                    pipe.unwatch()
                    log.info("stage already done by another attempt", extra={"job_id": ctx.job_id,
                                                                             "stage": ctx.stage})
                    _pass_on(ctx)
                    return
                pipe.multi()
                jobs.put_stage(pipe, ctx.job_id, ctx.stage, state)
                jobs.put_result(pipe, ctx.job_id, ctx.stage, result)
                events.append(pipe, ctx.job_id, "stage.done",
                              {"stage": ctx.stage, "result": result, "run_s": state["run_s"]}, ctx.settings.job_ttl_s)
                pipe.execute()
                break
            except redis.WatchError:
                continue  # the job hash changed (a sentence stored, a cost added): check again
    metrics.inc(metrics.JOBS, stage=ctx.stage, outcome="done")
    metrics.observe(metrics.STAGE_SECONDS, state["run_s"], stage=ctx.stage)
    _pass_on(ctx)


def _pass_on(ctx: StageContext) -> None:
    """Enqueue the plan's next stage, or mark the job done and announce it: each exactly once."""
    nxt = jobs.next_stage(ctx.job["plan"], ctx.stage)
    if nxt is not None:
        audio_s = float(ctx.job["inputs"].get("duration_s") or 0.0)
        queues.enqueue(ctx.conn, ctx.settings, ctx.job_id, nxt, ctx.job["priority"], audio_s)
        return
    key = jobs.key(ctx.job_id)
    with ctx.conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                final = jobs.load(ctx.conn, ctx.job_id)
                if final is None or final["status"] in jobs.TERMINAL_STATUSES:
                    pipe.unwatch()
                    return
                final["status"] = "done"
                pipe.multi()
                jobs.put_status(pipe, ctx.job_id, "done")
                events.append(pipe, ctx.job_id, "job.done", {"job": final}, ctx.settings.job_ttl_s)
                pipe.execute()
                return
            except redis.WatchError:
                continue


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
