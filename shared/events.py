"""A job's events: one Redis Stream per job, replayable from any id.

Each entry has a `type` and a JSON `data`. Results travel inside the events
(a client never has to fetch after a notification).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from shared import keys
from shared.redisio import text

TERMINAL = frozenset({"job.done", "job.failed", "job.cancelled"})
MAXLEN = 5000
# Blocking reads are cut into short waits: redis-py's default socket timeout (5 s) would
# otherwise turn a long XREAD BLOCK into a TimeoutError.
MAX_BLOCK_MS = 2000


def stream_key(job_id: str) -> str:
    return keys.job_events(job_id)


def append(
    pipe: redis.Redis | redis.client.Pipeline, job_id: str, type_: str, data: dict[str, Any], ttl_s: int
) -> None:
    key = stream_key(job_id)
    pipe.xadd(key, {keys.EVENT_TYPE: type_, keys.EVENT_DATA: json.dumps(data, ensure_ascii=False)}, maxlen=MAXLEN)
    pipe.expire(key, ttl_s)


Event = tuple[str, str, dict[str, Any]]


def parse(reply: Any) -> list[Event]:
    """XREAD reply → [(event id, type, data)]."""
    events: list[Event] = []
    for _key, entries in reply or []:
        for entry_id, fields in entries:
            events.append((text(entry_id), text(fields[keys.EVENT_TYPE.encode()]),
                           json.loads(fields[keys.EVENT_DATA.encode()])))
    return events


def history(conn: redis.Redis, job_id: str) -> list[Event]:
    """Every event the job has sent so far."""
    return parse([(stream_key(job_id), conn.xrange(stream_key(job_id)))])


def read(conn: redis.Redis, job_id: str, after: str = "0-0", block_ms: int | None = None) -> list[Event]:
    """Events strictly after `after`; blocks up to `block_ms` when there are none yet."""
    if block_ms is not None:
        block_ms = min(block_ms, MAX_BLOCK_MS)
    return parse(conn.xread({stream_key(job_id): after}, count=200, block=block_ms))


def wait_terminal(conn: redis.Redis, job_id: str, timeout_s: float) -> Event | None:
    """Block until the job's final event arrives (or the timeout passes)."""
    deadline = time.monotonic() + timeout_s
    after = "0-0"
    while (left := deadline - time.monotonic()) > 0:
        for event in read(conn, job_id, after, block_ms=max(1, int(left * 1000))):
            after = event[0]
            if event[1] in TERMINAL:
                return event
    return None
