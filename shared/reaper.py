"""Finding jobs whose worker died, and putting them back on their queue.

rq keeps each running job in its queue's StartedJobRegistry (`rq:wip:<queue>`)
scored with the time its heartbeat runs out; our workers heartbeat every
`worker_job_monitoring_interval_s` and set that deadline `worker_dead_after_s`
ahead (`shared.worker`). A job past its deadline lost its worker: a SIGKILLed
in-process worker, a forking worker's parent (its job process dies with it),
or a whole container. rq itself would notice only at its next maintenance and
then fail the job; here every worker runs `Reaper` in a thread, which requeues
such jobs at the front of their queue within seconds.

Requeueing is one WATCHed transaction on the registry: of two reapers that see
the same job, one wins and the other's transaction is refused, so a job is
never enqueued twice; a reaper killed halfway changes nothing. The stage then
re-runs as a new attempt (`shared.stage` counts them against the budget).

A job can also be lost one step earlier. A worker takes a job by moving its id
to the queue's intermediate list, then puts it in the registry; if the worker
never hears the move's answer (Redis shut down or the connection broke right
then) the job sits in that list, in no registry, and would never run. rq's own
maintenance fails such a job after a minute, at its next pass (every 10 min).
The reaper puts it back at the front of its queue once it has been there
`STRANDED_S` (`stranded`, `rescue`).

The same tick re-queues webhook deliveries whose next attempt is due
(`shared.webhooks.release_due`): workers run no rq scheduler, and a delivery
must not hold a worker while it waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import cast

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.executions import Execution, ExecutionRegistry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from shared import keys, metrics, retention, webhooks
from shared.config import CommonSettings
from shared.connection import connect
from shared.redisio import text, transaction

log = logging.getLogger(__name__)


def abandoned(conn: redis.Redis, queue_name: str, now: float | None = None) -> list[str]:
    """Registry entries (`<rq job id>:<execution id>`) of `queue_name` whose heartbeat ran out."""
    registry = StartedJobRegistry(queue_name, connection=conn)
    entries = conn.zrangebyscore(registry.key, 0, time.time() if now is None else now)
    return [text(cast(bytes, e)) for e in entries]


def requeue(conn: redis.Redis, queue_name: str, entry: str) -> bool:
    """Put the job of one abandoned registry entry back at the front of its queue, once.

    Returns True if this call requeued it; False if another reaper (or a late heartbeat) got there
    first, or the job is neither started nor lost between dequeue and start (then the stale entry is only
    dropped).
    """
    queue = Queue(queue_name, connection=conn)
    registry = StartedJobRegistry(queue_name, connection=conn)
    job_id = registry.parse_job_id(entry)

    def take(pipe: redis.client.Pipeline) -> bool:
        score = pipe.zscore(registry.key, entry)
        if score is None or score > time.time():
            return False  # taken by another reaper, or its worker beat again
        try:
            job: Job | None = Job.fetch(job_id, connection=conn)
        except NoSuchJobError:
            job = None
        dead = Execution.from_composite_key(entry, conn)
        queued = pipe.lpos(queue.key, job_id) is not None
        pipe.multi()
        pipe.zrem(registry.key, entry)
        # Forget the dead execution: rq would later look its (expired) record up and fail the job.
        pipe.delete(dead.key)
        pipe.zrem(ExecutionRegistry(job_id=job_id, connection=conn).key, dead.id)
        # QUEUED too: a forking worker registers the execution before the fork, and the job process marks the
        # job started; a worker killed in between leaves a job that is in no queue and would never run.
        status = job.get_status(refresh=False) if job is not None else None
        lost = status == JobStatus.STARTED or (status == JobStatus.QUEUED and not queued)
        if job is not None and lost:
            job.started_at = None
            queue.enqueue_job(job, pipeline=pipe, at_front=True)
        return lost

    # WATCHed: another job of the queue may heartbeat meanwhile; then look again.
    return transaction(conn, take, registry.key)


# A worker registers a job it took within milliseconds; one still unregistered after this was lost on the way.
STRANDED_S = 10.0


def stranded(conn: redis.Redis, queue_name: str, now: float | None = None) -> list[str]:
    """Job ids in `queue_name`'s intermediate list, not started, first seen there `STRANDED_S` ago or more
    (the first sighting is noted in Redis, where every worker's reaper sees it)."""
    intermediate = IntermediateQueue(Queue(queue_name, connection=conn).key, connection=conn)
    ids = intermediate.get_job_ids()
    if not ids:
        return []
    started = set(StartedJobRegistry(queue_name, connection=conn).get_job_ids(cleanup=False))
    current = time.time() if now is None else now
    out = []
    for job_id in ids:
        if job_id in started or intermediate.set_first_seen(job_id):
            continue
        first = intermediate.get_first_seen(job_id)
        if first is not None and current - first.timestamp() >= STRANDED_S:
            out.append(job_id)
    return out


def rescue(conn: redis.Redis, queue_name: str, job_id: str) -> bool:
    """Take `job_id` out of the intermediate list and, if it is still waiting to run and in no queue, put it
    back at the front of its queue. True if this call requeued it."""
    queue = Queue(queue_name, connection=conn)
    intermediate = IntermediateQueue(queue.key, connection=conn)

    def take(pipe: redis.client.Pipeline) -> bool:
        if pipe.lpos(intermediate.key, job_id) is None:
            return False  # another reaper got there first, or its worker caught up
        try:
            job: Job | None = Job.fetch(job_id, connection=conn)
        except NoSuchJobError:
            job = None
        queued = pipe.lpos(queue.key, job_id) is not None
        lost = job is not None and job.get_status(refresh=False) == JobStatus.QUEUED and not queued
        pipe.multi()
        pipe.lrem(intermediate.key, 1, job_id)
        pipe.delete(intermediate.get_first_seen_key(job_id))
        if lost:
            assert job is not None
            queue.enqueue_job(job, pipeline=pipe, at_front=True)
        return lost

    return transaction(conn, take, intermediate.key, queue.key)


def sweep(conn: redis.Redis, queue_names: Sequence[str]) -> list[str]:
    """Requeue every abandoned or stranded job of these queues; returns the rq job ids requeued."""
    requeued = []
    for queue_name in queue_names:
        for job_id in stranded(conn, queue_name):
            if rescue(conn, queue_name, job_id):
                requeued.append(job_id)
                metrics.inc(metrics.REQUEUED, queue=queue_name)
                log.warning("requeued a job lost between dequeue and start",
                            extra={"rq_job_id": job_id, "queue": queue_name})
        for entry in abandoned(conn, queue_name):
            if requeue(conn, queue_name, entry):
                job_id = StartedJobRegistry.parse_job_id(entry)
                requeued.append(job_id)
                metrics.inc(metrics.REQUEUED, queue=queue_name)
                log.warning("requeued an abandoned job (its worker stopped heartbeating)",
                            extra={"rq_job_id": job_id, "queue": queue_name})
    return requeued


RETENTION_LOCK = keys.RETENTION_LOCK


class Reaper(threading.Thread):
    """Sweeps the queues every `worker_reaper_interval_s` for as long as the process lives.

    After it has seen Redis unreachable it holds off for `worker_dead_after_s`: the workers could not
    heartbeat either, and their jobs must get the chance to beat again before they count as abandoned.
    """

    def __init__(self, settings: CommonSettings, queue_names: Sequence[str]) -> None:
        super().__init__(name="reaper", daemon=True)
        self.settings = settings
        self.queue_names = list(queue_names)
        self.stopped = threading.Event()
        self.quiet_until = 0.0

    def run(self) -> None:
        conn = connect(self.settings)
        while not self.stopped.wait(self.settings.worker_reaper_interval_s):
            self.tick(conn)

    def tick(self, conn: redis.Redis) -> None:
        try:
            if time.monotonic() >= self.quiet_until:
                sweep(conn, self.queue_names)
                webhooks.release_due(conn, self.settings)
                self.retention(conn)
        except (redis.ConnectionError, redis.TimeoutError):
            self.quiet_until = time.monotonic() + self.settings.worker_dead_after_s
            log.warning("reaper cannot reach Redis; holding off", exc_info=True)
        except Exception:  # the reaper must outlive any one bad entry
            log.exception("reaper sweep failed")

    def retention(self, conn: redis.Redis) -> None:
        """Now and then (one worker per interval, by a lock) give untimed keys their TTL: writes that land
        after a job was deleted would otherwise recreate its hash for good (shared.retention.sweep)."""
        interval = int(self.settings.retention_sweep_interval_s)
        if interval <= 0 or not conn.set(RETENTION_LOCK, 1, nx=True, ex=interval):
            return
        done = retention.sweep(conn, self.settings.job_ttl_s)
        if any(done.values()):
            log.info("retention sweep", extra=done)

    def paused(self) -> bool:
        return time.monotonic() < self.quiet_until
