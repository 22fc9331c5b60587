"""Conversation history: the last turns of a session, kept in Redis with an idle TTL.

A session is one Redis list `vq:session:<id>` of JSON messages {role, content, ts},
always written a user + assistant pair at a time in one MULTI, so concurrent
turns of one session interleave whole pairs, never halves.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis


def key(session_id: str) -> str:
    return f"vq:session:{session_id}"


def _messages(raw: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(item) for item in raw]


def history(conn: redis.Redis, session_id: str, max_turns: int) -> list[dict[str, str]]:
    """The last `max_turns` exchanges in turn order, as chat messages {role, content}."""
    if max_turns <= 0:
        return []
    raw = conn.lrange(key(session_id), -2 * max_turns, -1)
    return [{"role": m["role"], "content": m["content"]} for m in _messages(raw)]


def append_turn(
    conn: redis.Redis, session_id: str, user_text: str, reply: str, *, max_turns: int, ttl_s: int
) -> None:
    """Add one exchange, keep the last `max_turns`, and restart the idle TTL, atomically."""
    now = time.time()
    pair = [json.dumps({"role": role, "content": content, "ts": now}, ensure_ascii=False)
            for role, content in (("user", user_text), ("assistant", reply))]
    pipe = conn.pipeline(transaction=True)
    pipe.rpush(key(session_id), *pair)
    pipe.ltrim(key(session_id), -2 * max(max_turns, 1), -1)
    pipe.expire(key(session_id), ttl_s)
    pipe.execute()


def get(conn: redis.Redis, session_id: str) -> dict[str, Any] | None:
    """{id, turns: [{role, content, ts}, ...] oldest first, ttl_s}, or None for an unknown or expired session."""
    pipe = conn.pipeline(transaction=True)
    pipe.lrange(key(session_id), 0, -1)
    pipe.ttl(key(session_id))
    raw, ttl = pipe.execute()
    if not raw:
        return None
    return {"id": session_id, "turns": _messages(raw), "ttl_s": max(int(ttl), 0)}


def delete(conn: redis.Redis, session_id: str) -> bool:
    """Forget a session; False if there was none."""
    return bool(conn.delete(key(session_id)))
