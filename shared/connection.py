"""One way to open Redis, so every service uses the same options."""

from __future__ import annotations

import time

import redis


def connect(url: str, *, wait_s: float = 0.0) -> redis.Redis:
    """Open a binary-safe connection; with `wait_s`, keep trying while Redis starts up."""
    conn = redis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.ping()
            return conn
        except redis.ConnectionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
