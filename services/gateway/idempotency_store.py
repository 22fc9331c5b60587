"""The idempotency-key store behind the middleware in `idempotency.py`: the first request with a key claims it,
later ones get its stored response.

One Redis string per (tenant, route, key). While the first request runs it holds
a short lock (`pending`, refreshed by its owner, so a crashed gateway frees the
key within `LOCK_S`); once it answered, the record holds what a replay needs:
the request's fingerprint, the status, the headers, and the body when small.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

import redis.asyncio as aioredis

from shared import keys

PREFIX = keys.IDEMPOTENCY_PREFIX
LOCK_S = 30  # the owner refreshes the lock every LOCK_S / 3

# Replace KEYS[1] with ARGV[2] (px ARGV[3]) only if it still holds the owner's lock ARGV[1].
_IF_OWNER = """
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
local ok, record = pcall(cjson.decode, value)
if not ok or record['state'] ~= 'pending' or record['owner'] ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""


def key(tenant: str, route: str, idempotency_key: str) -> str:
    # Hashed: client keys may hold any printable character and up to 255 of them.
    digest = hashlib.sha256(f"{route}\n{idempotency_key}".encode()).hexdigest()[:40]
    return f"{PREFIX}{tenant}:{digest}"


def valid(idempotency_key: str) -> bool:
    return 1 <= len(idempotency_key) <= 255 and all(" " <= c <= "~" for c in idempotency_key)


def _decode(value: bytes | str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        return cast(dict[str, Any], json.loads(value))
    except ValueError:
        return None


class Store:
    def __init__(self, conn: aioredis.Redis) -> None:
        self.conn = conn
        self._if_owner = conn.register_script(_IF_OWNER)

    async def claim(self, k: str, owner: str) -> dict[str, Any] | None:
        """Take the key (None) or return the record already there (pending or done)."""
        pending = json.dumps({"state": "pending", "owner": owner})
        if await self.conn.set(k, pending, nx=True, ex=LOCK_S):
            return None
        return _decode(await self.conn.get(k)) or {"state": "pending", "owner": ""}

    async def load(self, k: str) -> dict[str, Any] | None:
        return _decode(await self.conn.get(k))

    async def refresh(self, k: str, owner: str) -> bool:
        pending = json.dumps({"state": "pending", "owner": owner})
        return bool(await self._if_owner(keys=[k], args=[owner, pending, LOCK_S * 1000]))

    async def finish(self, k: str, owner: str, record: dict[str, Any], ttl_s: int) -> bool:
        """Store the answer for replays, if this owner still holds the key."""
        value = json.dumps({**record, "state": "done"}, separators=(",", ":"))
        return bool(await self._if_owner(keys=[k], args=[owner, value, ttl_s * 1000]))

    async def release(self, k: str, owner: str) -> None:
        """Give the key back (the request failed: a retry with the same key may run afresh)."""
        await self._if_owner(keys=[k], args=[owner, "", 0])
