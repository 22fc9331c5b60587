"""Conversation history: the last turns of a session, kept in Redis with an idle TTL.

A session is one Redis list (`keys.session`) of JSON messages {role, content, ts},
always written a user + assistant pair at a time in one MULTI, so concurrent
turns of one session interleave whole pairs, never halves. Session ids are the
caller's choice, so they are namespaced by tenant: two tenants may both use "s1".
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from shared import keys
from shared.tenants import OPEN_TENANT


def key(session_id: str, tenant: str = OPEN_TENANT) -> str:
    # Neither a tenant name nor a session id can hold ':', so the key names exactly one pair.
    return keys.session(tenant, session_id)


def _messages(raw: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(item) for item in raw]


def history(conn: redis.Redis, session_id: str, max_turns: int, *, tenant: str = OPEN_TENANT) -> list[dict[str, str]]:
    """The last `max_turns` exchanges in turn order, as chat messages {role, content}."""
    if max_turns <= 0:
        return []
    raw = conn.lrange(key(session_id, tenant), -2 * max_turns, -1)
    return [{"role": m["role"], "content": m["content"]} for m in _messages(raw)]


def append_turn(
    conn: redis.Redis, session_id: str, user_text: str, reply: str, *, max_turns: int, ttl_s: int,
    tenant: str = OPEN_TENANT,
) -> None:
    """Add one exchange, keep the last `max_turns`, and restart the idle TTL, atomically."""
    now = time.time()
    pair = [json.dumps({"role": role, "content": content, "ts": now}, ensure_ascii=False)
            for role, content in (("user", user_text), ("assistant", reply))]
    name = key(session_id, tenant)
    pipe = conn.pipeline(transaction=True)
    pipe.rpush(name, *pair)
    pipe.ltrim(name, -2 * max(max_turns, 1), -1)
    pipe.expire(name, ttl_s)
    pipe.execute()


def get(conn: redis.Redis, session_id: str, *, tenant: str = OPEN_TENANT) -> dict[str, Any] | None:
    """{id, turns: [{role, content, ts}, ...] oldest first, ttl_s}, or None for an unknown or expired session."""
    pipe = conn.pipeline(transaction=True)
    pipe.lrange(key(session_id, tenant), 0, -1)
    pipe.ttl(key(session_id, tenant))
    raw, ttl = pipe.execute()
    if not raw:
        return None
    return {"id": session_id, "turns": _messages(raw), "ttl_s": max(int(ttl), 0)}


def delete(conn: redis.Redis, session_id: str, *, tenant: str = OPEN_TENANT) -> bool:
    """Forget a session; False if there was none."""
    return bool(conn.delete(key(session_id, tenant)))
