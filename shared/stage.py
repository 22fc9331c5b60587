"""Running one stage of a job: the bookkeeping every worker shares.

A service supplies `load(settings) -> resources` and `work(ctx) -> result`
(`shared.worker.serve` loads once and passes the resources on every `ctx`);
this module marks the stage running, times it, stores the result, appends
events and enqueues the plan's next stage.

At-least-once: a stage whose worker died is run again (`shared.reaper`). Each run
is an attempt counted in the stage's record; past `settings.max_attempts(stage)`
the job fails with "retry_budget_exhausted". A re-run overwrites the stage's
result; storing it and announcing `stage.done` happen once (a run that finds the
stage already done only passes the job on, which is itself idempotent). Events a
service sends as it goes can be checked against the earlier attempts' with
`ctx.earlier(type)` so listeners do not get them twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import redis

from shared import events, jobs, keys, logs, metrics, queues, run_times
from shared.blobs import RedisBlobStore
from shared.config import CommonSettings
from shared.jobs import Job, JobError, JobStatus, Record, StageState, StageStatus
from shared.redisio import transaction

log = logging.getLogger(__name__)

R = TypeVar("R")


class StageError(Exception):
    """A stage cannot finish for a stated reason (bad input, upstream exhausted). The job fails; the worker lives."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class StageContext(Generic[R]):
    """One run of one stage of one job: the record as it was at the start, and the service's resources."""

    conn: redis.Redis
    settings: CommonSettings
    job: Job
    stage: str
    resources: R
    attempt: int = 1
    _earlier: list[events.Event] | None = field(default=None, repr=False)

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def blobs(self) -> RedisBlobStore:
        return RedisBlobStore(self.conn)

    def emit(self, type_: str, data: dict[str, Any]) -> None:
        events.append(self.conn, self.job_id, type_, data, self.settings.job_ttl_s)

    def cancelled(self) -> bool:
        return jobs.status(self.conn, self.job_id) in (None, JobStatus.CANCELLED)

    def earlier(self, type_: str) -> list[dict[str, Any]]:
        """The data of the `type_` events earlier attempts of this job already sent (none on a first run)."""
        if self.attempt <= 1:
            return []
        if self._earlier is None:
            self._earlier = events.history(self.conn, self.job_id)
        return [data for _id, type_seen, data in self._earlier if type_seen == type_]

    def emit_once(self, type_: str, data: dict[str, Any]) -> None:
        """`emit`, unless an earlier attempt already sent this event type."""
        if not self.earlier(type_):
            self.emit(type_, data)


Result = Record | dict[str, Any]
Work = Callable[[StageContext[R]], Result]


def run(stage: str, job_id: str, conn: redis.Redis, settings: CommonSettings, work: Work[R],
        resources: R | None = None) -> None:
    """Run `work` as stage `stage` of the job (`resources` reach it as `ctx.resources`)."""
    with logs.context(job_id=job_id, stage=stage):  # every log line of the stage names its job
        _run(stage, job_id, conn, settings, work, resources)



def _run(stage: str, job_id: str, conn: redis.Redis, settings: CommonSettings, work: Work[R],
         resources: R | None) -> None:
    record = jobs.fetch(conn, job_id)
    if record is not None:
        logs.bind(tenant=record.tenant)
    if record is None or record.finished:
        log.info("skipping stage", extra={"job_id": job_id, "stage": stage})
        return
    ctx: StageContext[R] = StageContext(conn, settings, record, stage, resources)  # type: ignore[arg-type]
    before = record.stage(stage) or StageState(status=StageStatus.QUEUED)
    if before.status == StageStatus.DONE:
        # The last attempt stored its result, then died before passing the job on.
        _pass_on(ctx)
        return
    if before.attempts >= settings.max_attempts(stage):
        state = before.model_copy(update={"started_at": time.time()})
        _fail(ctx, state, "retry_budget_exhausted",
              f"the {stage} stage was started {before.attempts} times and never finished (its worker "
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


def _start(ctx: StageContext[R]) -> StageState:
    now = time.time()
    before = ctx.job.stage(ctx.stage)
    state = before.model_copy() if before is not None else StageState(status=StageStatus.QUEUED)
    queued_at = state.queued_at if state.queued_at is not None else now
    state.status, state.started_at, state.queue_wait_s = StageStatus.RUNNING, now, now - queued_at
    state.attempts = state.attempts + 1
    ctx.attempt = state.attempts
    pipe = ctx.conn.pipeline()
    jobs.put_stage(pipe, ctx.job_id, ctx.stage, state)
    jobs.put_status(pipe, ctx.job_id, JobStatus.RUNNING)
    events.append(pipe, ctx.job_id, "stage.started", {"stage": ctx.stage, "attempt": state.attempts},
                  ctx.settings.job_ttl_s)
    pipe.execute()
    if ctx.attempt > 1:
        metrics.inc(metrics.STAGE_RERUNS, stage=ctx.stage)
        log.warning("stage re-run", extra={"job_id": ctx.job_id, "stage": ctx.stage, "attempt": ctx.attempt})
    else:
        metrics.observe(metrics.QUEUE_WAIT, state.queue_wait_s, stage=ctx.stage, priority=ctx.job.priority)
    return state


def _finish(ctx: StageContext[R], state: StageState, result: Result) -> None:
    now = time.time()
    state.status, state.finished_at = StageStatus.DONE, now
    state.run_s = now - (state.started_at or now)
    stored = result.wire() if isinstance(result, Record) else result

    def store(pipe: redis.client.Pipeline) -> bool:
        before = pipe.hget(jobs.key(ctx.job_id), keys.stage_field(ctx.stage))
        if before is not None and StageState.model_validate_json(before).status == StageStatus.DONE:
            return False
        pipe.multi()
        jobs.put_stage(pipe, ctx.job_id, ctx.stage, state)
        jobs.put_result(pipe, ctx.job_id, ctx.stage, stored)
        events.append(pipe, ctx.job_id, "stage.done", {"stage": ctx.stage, "result": stored, "run_s": state.run_s},
                      ctx.settings.job_ttl_s)
        run_times.record(pipe, queues.name(ctx.stage, ctx.job.priority), state.run_s or 0.0)  # for Retry-After
        return True

    # WATCHed: the job hash changes under us (a sentence stored, a cost added); another attempt may finish first.
    if transaction(ctx.conn, store, jobs.key(ctx.job_id)):
        metrics.inc(metrics.JOBS, stage=ctx.stage, outcome="done")
        metrics.observe(metrics.STAGE_SECONDS, state.run_s, stage=ctx.stage)
    else:
        log.info("stage already done by another attempt", extra={"job_id": ctx.job_id, "stage": ctx.stage})
    _pass_on(ctx)


def _pass_on(ctx: StageContext[R]) -> None:
    """Enqueue the plan's next stage, or mark the job done and announce it: each exactly once."""
    nxt = jobs.next_stage(ctx.job.plan, ctx.stage)
    if nxt is not None:
        audio_s = float(ctx.job.inputs.duration_s or 0.0)
        queues.enqueue(ctx.conn, ctx.settings, ctx.job_id, nxt, ctx.job.priority, audio_s)
        return

    def announce(pipe: redis.client.Pipeline) -> None:
        final = jobs.fetch(ctx.conn, ctx.job_id)
        if final is None or final.finished:
            return
        final.status = JobStatus.DONE
        pipe.multi()
        jobs.put_status(pipe, ctx.job_id, JobStatus.DONE)
        events.append(pipe, ctx.job_id, "job.done", {"job": final.wire()}, ctx.settings.job_ttl_s)

    transaction(ctx.conn, announce, jobs.key(ctx.job_id))


def _fail(ctx: StageContext[R], state: StageState, reason: str, message: str) -> None:
    now = time.time()
    error = JobError(stage=ctx.stage, reason=reason, message=message)
    state.status, state.finished_at, state.error = StageStatus.FAILED, now, error
    state.run_s = now - (state.started_at or now)
    pipe = ctx.conn.pipeline()
    jobs.put_stage(pipe, ctx.job_id, ctx.stage, state)
    jobs.put_status(pipe, ctx.job_id, JobStatus.FAILED, error)
    events.append(pipe, ctx.job_id, "stage.failed", error.wire(), ctx.settings.job_ttl_s)
    events.append(pipe, ctx.job_id, "job.failed", {"error": error.wire()}, ctx.settings.job_ttl_s)
    pipe.execute()
    metrics.inc(metrics.JOBS, stage=ctx.stage, outcome="failed")
    log.warning("stage failed", extra={"job_id": ctx.job_id, "stage": ctx.stage, "reason": reason})


def perform(job_id: str) -> None:
    """The function every stage job names on its rq queue (`shared.queues.STAGE_TASK`).

    A `voicequeue worker` runs the job as its own service's stage (`shared.worker.StageJob`); nothing else
    can, so a plain `rq worker` is refused here instead of running a stage without its models.
    """
    raise RuntimeError(f"job {job_id}: voicequeue jobs run only in `voicequeue worker`, which loads the "
                       "stage's models once and hands them to every job")


def perform_sentence(job_id: str, seq: int, text: str) -> None:
    """The function every sentence job names (`shared.queues.CHUNK_TASK`); see `perform`."""
    perform(job_id)
