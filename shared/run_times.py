"""Recent run times per stage queue, so the gateway can say how long a full queue takes to make room.

Each finished stage pushes its run time onto a short capped list (`keys.run_times`);
the median of the last few is robust to one long recording or one cold start.
"""

from __future__ import annotations

import statistics

import redis

from shared import keys

KEEP = 50
TTL_S = 24 * 3600  # a queue idle for a day has no "recent" times


def key(queue: str) -> str:
    return keys.run_times(queue)


def record(pipe: redis.client.Pipeline | redis.Redis, queue: str, run_s: float) -> None:
    pipe.lpush(key(queue), round(run_s, 4))
    pipe.ltrim(key(queue), 0, KEEP - 1)
    pipe.expire(key(queue), TTL_S)


def median(conn: redis.Redis, queue: str) -> float | None:
    """The median of the recent run times of jobs taken from `queue`, or None if none is known."""
    values = [float(v) for v in conn.lrange(key(queue), 0, KEEP - 1)]
    return statistics.median(values) if values else None
