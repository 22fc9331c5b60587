"""Two Redis idioms every module needs: reading a reply as text, and an optimistic transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis

T = TypeVar("T")


def text(value: bytes | str) -> str:
    """A Redis reply (bytes unless the client decodes) as str."""
    return value.decode() if isinstance(value, bytes) else value


def transaction(conn: redis.Redis, fn: Callable[[redis.client.Pipeline], T], *watched: str) -> T:
    """WATCH `watched`, run `fn(pipe)`, EXEC; again from the start whenever a watched key changed meanwhile.

    `fn` reads through `pipe` (immediate while watching), calls `pipe.multi()` before its writes, and
    returns its answer; returning without `multi()` writes nothing. This is redis-py's own
    `Redis.transaction`, typed.
    """
    run = cast(Callable[[redis.client.Pipeline], Any], fn)
    return cast(T, conn.transaction(run, *watched, value_from_callable=True))
