"""The speech cache: a sentence's WAV by (engine, voice, speed, text), so a repeated sentence skips synthesis.

Replies repeat ("Is there anything else I can help you with?"), and a cached
answer is split into the same sentences every time, so its audio comes from
here too. Entries expire after `tts_cache_ttl_s`.
"""

from __future__ import annotations

import hashlib
import json

import redis

from shared import keys, metrics

PREFIX = keys.SPEECH_PREFIX


def key_for(engine: str, voice: str, speed: float, text: str) -> str:
    # Whitespace never changes the audio; case and punctuation can (prosody), so they stay.
    spec = json.dumps([engine, voice, round(speed, 3), " ".join(text.split())], ensure_ascii=False)
    return PREFIX + hashlib.sha256(spec.encode()).hexdigest()


def get(conn: redis.Redis, key: str) -> bytes | None:
    """The cached WAV, counted as a hit or a miss of `cache="speech"`."""
    value = conn.get(key)
    metrics.inc(metrics.CACHE_HITS if value is not None else metrics.CACHE_MISSES, cache="speech")
    return value if isinstance(value, bytes) or value is None else value.encode()


def put(conn: redis.Redis, key: str, wav: bytes, ttl_s: int) -> None:
    conn.set(key, wav, ex=ttl_s)
