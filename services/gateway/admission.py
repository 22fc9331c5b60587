"""Admission to a stage queue: the depth check and the enqueue are one Redis transaction.

A separate check-then-enqueue lets concurrent submissions all see room and all go in. Here the
check runs on a connection WATCHing the queue; if anyone pushes or pops meanwhile, the check and
the enqueue run again (`shared.queues.enqueue(admit=...)`), so the queue never passes its limit.

A refusal's Retry-After is when room should appear: the jobs over the limit, times the recent
median run time of the queue's jobs, shared among the worker processes taking from it. A process
counts once even when it runs several jobs at once (the llm worker, one per server slot): those jobs
share one server, so they do not finish that many times as fast, and counting each would promise room
sooner than it comes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis
from rq import Queue, Worker

from services.gateway.config import GatewaySettings
from services.gateway.errors import ApiError
from shared import run_times


class QueueFull(Exception):
    def __init__(self, queue: str, depth: int, most: int) -> None:
        super().__init__(f"{queue} holds {depth} jobs (limit {most})")
        self.queue, self.depth, self.most = queue, depth, most


def limit(settings: GatewaySettings, queue: str) -> int:
    return settings.max_queue_depth_batch if queue.endswith(":batch") else settings.max_queue_depth_live


@dataclass
class Room:
    """`shared.queues.Admit` for `queue`: refuses once it holds `most` jobs."""

    queue: str
    most: int

    @property
    def key(self) -> str:
        return Queue.redis_queue_namespace_prefix + self.queue

    def check(self, pipe: redis.client.Pipeline) -> None:
        depth = int(pipe.llen(self.key))
        if depth >= self.most:
            raise QueueFull(self.queue, depth, self.most)


def retry_after_s(conn: redis.Redis, settings: GatewaySettings, queue: str, depth: int, most: int) -> int:
    """Seconds until the queue should have room: (depth - most + 1) jobs must be taken first."""
    per_job = run_times.median(conn, queue)
    if per_job is None:
        per_job = float(settings.queue_full_retry_after_s)
    # No worker on the queue (one restarting): count one, as /readyz already reports the gap.
    workers = max(1, processes(conn, queue))
    seconds = (depth - most + 1) * per_job / workers
    return max(1, min(settings.queue_full_retry_after_max_s, math.ceil(seconds)))


def processes(conn: redis.Redis, queue: str) -> int:
    """Worker processes taking from `queue`: rq workers, with those of one process (threads) counted once."""
    return len({(w.hostname, w.pid) for w in Worker.all(connection=conn, queue=Queue(queue, connection=conn))})


def refusal(conn: redis.Redis, settings: GatewaySettings, full: QueueFull) -> ApiError:
    retry = retry_after_s(conn, settings, full.queue, full.depth, full.most)
    return ApiError(429, "queue_full", f"the {full.queue} queue holds {full.depth} jobs (limit {full.most}); "
                    f"retry after {retry} s", {"Retry-After": str(retry)})
