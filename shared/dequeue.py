"""Taking a job off one of several queues without ever losing it to a dropped reply.

A worker that serves one queue takes jobs with rq's BLMOVE into the queue's
intermediate list, so a job whose taking the worker never heard about (Redis
shut down or the connection broke right then) stays in Redis, and
`shared.reaper` puts it back. For several queues (`<stage>:live` before
`<stage>:batch`) rq falls back to BLPOP, and a popped job whose reply is lost
is gone: Redis applied the pop, the AOF kept it, and the job is in no queue
and no registry. The job record then says "running" for good. That happened
on a graceful Redis restart in CI (tests/reliability/test_redis_restart.py).

`MovingQueue` takes from several queues the way rq takes from one: an LMOVE of
each queue in priority order, then a BLMOVE on the first (BLMOVE names one
source list) for at most `BLOCK_S` before the later queues are looked at
again. A live job is taken the moment it arrives; a batch job, which waits
for the live queue anyway, within `BLOCK_S`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.utils import as_text

BLOCK_S = 1  # whole seconds: BLMOVE's timeout as redis-py types it


class MovingQueue(Queue):
    """rq's Queue whose `dequeue_any` moves every job it takes into the queue's intermediate list."""

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: Redis,
        job_class: type[Job] | None = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[Job, Queue] | None:
        ordered = list(queues)
        if len(ordered) == 1:  # rq takes a single queue with BLMOVE already
            return super().dequeue_any(ordered, timeout, connection, job_class=job_class, serializer=serializer,
                                       death_penalty_class=death_penalty_class)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # rq's own move (LMOVE, or BLMOVE given a timeout) from one queue into its intermediate list.
            taken = next((t for q in ordered if (t := cls.lmove(connection, q.key, None)) is not None), None)
            if taken is None and deadline is not None:
                wait_s = min(BLOCK_S, math.ceil(deadline - time.monotonic()))
                if wait_s > 0:
                    with contextlib.suppress(DequeueTimeout):
                        taken = cls.lmove(connection, ordered[0].key, wait_s)
            if taken is not None:
                queue_key, job_id = map(as_text, taken)
                fetched = cls._fetch_dequeued_job(connection, queue_key, job_id, job_class=job_class,
                                                  serializer=serializer, death_penalty_class=death_penalty_class)
                if fetched is not None:
                    return fetched
                continue  # the job expired while queued; the reaper drops its id from the list
            if deadline is None:
                return None
            if time.monotonic() >= deadline:
                raise DequeueTimeout(timeout, [q.key for q in ordered])
