"""Reading a job's event stream from the gateway's event loop (async Redis)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import redis.asyncio as aioredis

from shared import events


async def follow(
    aconn: aioredis.Redis, job_id: str, after: str = "0-0", idle_s: float = 15.0, timeout_s: float | None = None
) -> AsyncGenerator[events.Event | None, None]:
    """Yield events after `after` until a terminal one; yield None after each `idle_s` of silence (keep-alive)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    while deadline is None or time.monotonic() < deadline:
        block_ms = events.MAX_BLOCK_MS
        if deadline is not None:
            block_ms = max(1, min(block_ms, int((deadline - time.monotonic()) * 1000)))
        batch = events.parse(await aconn.xread({events.stream_key(job_id): after}, count=200, block=block_ms))
        if not batch:
            if time.monotonic() - quiet_since >= idle_s:
                quiet_since = time.monotonic()
                yield None
            continue
        quiet_since = time.monotonic()
        for event in batch:
            after = event[0]
            yield event
            if event[1] in events.TERMINAL:
                return
