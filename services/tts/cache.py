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


WORDS = ":words"  # beside the WAV: when its words end (a live call keeps the words a caller heard)


def get(conn: redis.Redis, key: str) -> tuple[bytes, list[float] | None] | None:
    """The cached WAV and its word end times, counted as a hit or a miss of `cache="speech"`."""
    wav, words = conn.mget(key, key + WORDS)
    metrics.inc(metrics.CACHE_HITS if wav is not None else metrics.CACHE_MISSES, cache="speech")
    if wav is None:
        return None
    return _bytes(wav), json.loads(words) if words is not None else None


def put(conn: redis.Redis, key: str, wav: bytes, ttl_s: int, word_ends_s: list[float] | None = None) -> None:
    with conn.pipeline(transaction=False) as pipe:
        pipe.set(key, wav, ex=ttl_s)
        if word_ends_s is not None:
            pipe.set(key + WORDS, json.dumps(word_ends_s), ex=ttl_s)
        pipe.execute()


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
