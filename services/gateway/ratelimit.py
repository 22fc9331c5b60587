"""Token buckets in Redis: one atomic script per request, shared by every gateway process.

A bucket holds up to `burst` tokens and refills at `per_s` tokens a second; a
request takes one. The script reads Redis's own clock, so gateways on machines
with skewed clocks still agree, and the key expires once a full bucket would
have refilled (an idle tenant costs nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis.asyncio as aioredis

from shared import keys

PREFIX = keys.RATELIMIT_PREFIX

# KEYS[1] bucket hash; ARGV: per_s, burst, cost. Returns {allowed, tokens left x1000, ms until `cost` tokens}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
local wait_ms = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait_ms = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, math.floor(tokens * 1000), wait_ms}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    remaining: float  # tokens left after this request
    retry_after_s: int  # whole seconds until a request would pass (>= 1 when refused)


def key(tenant: str, bucket: str) -> str:
    return f"{PREFIX}{bucket}:{tenant}"


class TokenBucket:
    """`take` one token from a tenant's bucket. `per_s <= 0` means unlimited."""

    def __init__(self, conn: aioredis.Redis) -> None:
        self._script = conn.register_script(_TAKE)

    async def take(self, tenant: str, bucket: str, per_s: float, burst: int, cost: int = 1) -> Verdict:
        if per_s <= 0:
            return Verdict(True, float("inf"), 0)
        allowed, milli_tokens, wait_ms = await self._script(keys=[key(tenant, bucket)],
                                                            args=[per_s, max(burst, cost), cost])
        retry = 0 if allowed else max(1, math.ceil(int(wait_ms) / 1000))
        return Verdict(bool(allowed), int(milli_tokens) / 1000, retry)
