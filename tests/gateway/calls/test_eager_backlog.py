"""Eager replies back off under load: a `CallSession` (real Redis, no socket, no workers) starts none while
other callers' jobs wait in the live ASR or LLM queue, and counts the pause as busy."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from services.gateway.calls import pipeline
from services.gateway.calls.session import CallSession
from services.gateway.config import GatewaySettings
from shared import queues


def session(redis_url: str, conn: redis.Redis, **settings: object) -> CallSession:
    async def send(_event: dict[str, object]) -> None:
        return None

    return CallSession(conn=conn, aconn=aioredis.Redis.from_url(redis_url), settings=GatewaySettings(**settings),
                       tenant="t", send=send, transport="test")


def busy_count() -> float:
    return REGISTRY.get_sample_value("voicequeue_call_eager_replies_total", {"transport": "test",
                                                                             "outcome": "busy"}) or 0.0


def waiting(conn: redis.Redis, stage: str, n: int) -> None:
    """`n` jobs of other callers waiting for a worker (rq's list of queued job ids)."""
    conn.rpush(queues.rq_key(queues.name(stage, "live")), *[f"other-{stage}-{i}" for i in range(n)])


def test_no_backlog_allows_an_eager_reply(redis_url: str, conn: redis.Redis) -> None:
    call = session(redis_url, conn)
    assert asyncio.run(call._eager_allowed()) is True


@pytest.mark.parametrize("stage", ["asr", "llm"])
def test_other_callers_jobs_waiting_stop_eager_replies(redis_url: str, conn: redis.Redis, stage: str) -> None:
    waiting(conn, stage, 1)
    before = busy_count()
    assert asyncio.run(session(redis_url, conn)._eager_allowed()) is False
    assert busy_count() - before == 1
    assert asyncio.run(session(redis_url, conn, call_eager_max_backlog=1)._eager_allowed()) is True


def test_the_calls_own_pieces_do_not_count_as_a_backlog(redis_url: str, conn: redis.Redis) -> None:
    waiting(conn, "asr", 2)
    call = session(redis_url, conn)
    call._jobs.update({"own-piece-1", "own-piece-2"})  # its own transcriptions, waiting like the others
    assert asyncio.run(call._eager_allowed()) is True
    waiting(conn, "llm", 1)
    assert asyncio.run(call._eager_allowed()) is False
    assert asyncio.run(pipeline.live_backlog(call.aconn)) == 3
