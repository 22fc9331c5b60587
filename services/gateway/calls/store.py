"""Call records in Redis: who owns the call, both sides' words with times, barge-ins, latencies, cost.

`vq:call:<id>` is a hash with one JSON field `record`, rewritten whole after each change (a call
changes a few times a turn). Concurrent calls per tenant are a sorted set of call ids scored by
when their slot lapses, refreshed while the call lives, so a gateway that dies leaks no slot.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from shared import keys

SLOT_TTL_S = 60


def key(call_id: str) -> str:
    return keys.call(call_id)


def active_key(tenant: str) -> str:
    return keys.calls_active(tenant)


def save(conn: redis.Redis, record: dict[str, Any], ttl_s: int) -> None:
    pipe = conn.pipeline()
    pipe.hset(key(record["id"]), "record", json.dumps(record, ensure_ascii=False))
    pipe.expire(key(record["id"]), ttl_s)
    pipe.execute()


def load(conn: redis.Redis, call_id: str) -> dict[str, Any] | None:
    raw = conn.hget(key(call_id), "record")
    return json.loads(raw) if raw else None


def take_slot(conn: redis.Redis, tenant: str, call_id: str, cap: int) -> bool:
    """Hold one of the tenant's `cap` call slots (0: no cap). False when all are taken."""
    name, now = active_key(tenant), time.time()
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(name)
                pipe.zremrangebyscore(name, 0, now)
                if cap > 0 and pipe.zcard(name) >= cap:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.zadd(name, {call_id: now + SLOT_TTL_S})
                pipe.expire(name, SLOT_TTL_S * 2)
                pipe.execute()
                return True
            except redis.WatchError:
                continue


def refresh_slot(conn: redis.Redis, tenant: str, call_id: str) -> None:
    conn.zadd(active_key(tenant), {call_id: time.time() + SLOT_TTL_S}, xx=True)
    conn.expire(active_key(tenant), SLOT_TTL_S * 2)


def free_slot(conn: redis.Redis, tenant: str, call_id: str) -> None:
    conn.zrem(active_key(tenant), call_id)
