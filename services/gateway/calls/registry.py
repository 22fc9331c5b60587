"""The calls open in this gateway process, so that stopping the gateway ends each one cleanly (its pending
work cancelled, its record closed, the caller told why) before the server drops their sockets.

Process-wide like the call metrics: a gateway process serves one app, and the AudioSocket listener's calls
live beside the WebSocket ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

log = logging.getLogger(__name__)

SHUTDOWN = "gateway_shutdown"


class Call(Protocol):
    """What ending a call needs (a `CallSession`)."""

    id: str

    async def end(self, reason: str) -> None: ...


_open: set[Call] = set()


def add(session: Call) -> None:
    _open.add(session)


def discard(session: Call) -> None:
    _open.discard(session)


def open_calls() -> list[Call]:
    return list(_open)


async def end_all(reason: str = SHUTDOWN, timeout_s: float = 5.0) -> int:
    """End every open call with `reason` and wait (at most `timeout_s`) until their adapters have closed
    the connections; returns how many calls were ended."""
    calls = open_calls()
    if not calls:
        return 0
    log.info("ending open calls", extra={"calls": len(calls), "reason": reason})
    deadline = time.monotonic() + timeout_s
    ending = [asyncio.ensure_future(call.end(reason)) for call in calls]
    await asyncio.wait(ending, timeout=timeout_s)
    while any(call in _open for call in calls) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    left = [call.id for call in calls if call in _open]
    if left:
        log.warning("calls still open after shutdown wait", extra={"call_ids": left})
    return len(calls)
