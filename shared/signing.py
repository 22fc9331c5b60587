"""Signed outgoing requests (webhooks and tenant tool calls): HMAC-SHA256 over the timestamp and the body.

The header is `X-Voicequeue-Signature: t=<unix seconds>,v1=<hex digest>`, where the digest is
HMAC-SHA256(secret, "<t>.<body>"). The timestamp is signed with the body so a captured request cannot be
replayed later: receivers refuse a `t` older than their tolerance (`verify` uses 5 minutes).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "X-Voicequeue-Signature"
TOLERANCE_S = 300


def new_secret() -> str:
    """A fresh per-tenant signing secret."""
    return "whsec_" + secrets.token_urlsafe(32)


def digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def header(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The signature header for `body`, signed now."""
    timestamp = int(now if now is not None else time.time())
    return {HEADER: f"t={timestamp},v1={digest(secret, timestamp, body)}"}


def verify(secret: str, body: bytes, value: str, now: float | None = None, tolerance_s: int = TOLERANCE_S) -> bool:
    """Whether `value` (the header's content) signs `body` with `secret`, recently enough."""
    parts = dict(p.split("=", 1) for p in value.split(",") if "=" in p)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(parts.get("v1", ""), digest(secret, timestamp, body))
