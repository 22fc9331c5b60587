"""One way to open Redis, so every service uses the same options and finds the same primary.

With `VQ_REDIS_SENTINELS` set, clients ask the Sentinels for the current primary of
`VQ_REDIS_SENTINEL_MASTER` before each new connection, and drop connections to a
primary that was demoted (redis-py's Sentinel pool turns its READONLY reply into a
connection error), so the next attempt lands on the promoted replica. `VQ_REDIS_URL`
then supplies only the database number and credentials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.connection import parse_url
from redis.sentinel import Sentinel, SentinelConnectionPool

from shared import keys
from shared.config import CommonSettings

log = logging.getLogger(__name__)

# Sentinels answer from memory: a slow one is a dead one, and the next one is asked.
SENTINEL_TIMEOUT_S = 0.5
SENTINEL_KWARGS = {"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S}
# A dead primary on another host would otherwise hang a connect for the OS's TCP timeout.
CONNECT_TIMEOUT_S = 2.0


def sentinel_addresses(spec: str) -> list[tuple[str, int]]:
    """`host:port,host:port` as (host, port) pairs; a bare host gets Sentinel's port 26379."""
    out = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        if not host or not port.isdigit():
            raise ValueError(f"VQ_REDIS_SENTINELS: {item!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    return out


def _target(settings: CommonSettings | str) -> tuple[str, list[tuple[str, int]], str]:
    if isinstance(settings, str):
        return settings, [], ""
    return settings.redis_url, sentinel_addresses(settings.redis_sentinels), settings.redis_sentinel_master


def _url_options(url: str) -> dict[str, Any]:
    """What the URL says besides where Redis is: db, username, password, TLS."""
    options = dict(parse_url(url))  # type: ignore[no-untyped-call]
    for where in ("host", "port", "path", "connection_class"):
        options.pop(where, None)
    return options


def client(settings: CommonSettings | str, **options: Any) -> redis.Redis:
    """A binary-safe client of the current primary (it connects on first use).

    `options` are redis-py client options (retry, retry_on_error, socket timeouts)."""
    url, sentinels, master = _target(settings)
    options = {"health_check_interval": 30, "socket_keepalive": True, **options}
    if not sentinels:
        return redis.Redis.from_url(url, **options)
    manager = Sentinel(sentinels, sentinel_kwargs=SENTINEL_KWARGS)  # type: ignore[no-untyped-call]
    conn: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
        master, redis_class=redis.Redis, **{"socket_connect_timeout": CONNECT_TIMEOUT_S, **_url_options(url),
                                            **options})
    return conn


def connect(settings: CommonSettings | str, *, wait_s: float = 0.0, **options: Any) -> redis.Redis:
    """`client`, checked with a PING; with `wait_s`, keep trying while Redis starts up."""
    conn = client(settings, **options)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.ping()
            return conn
        except redis.ConnectionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def connect_async(settings: CommonSettings | str, **options: Any) -> aioredis.Redis:
    """The asyncio twin of `connect` (not pinged: there is no loop to wait on here)."""
    url, sentinels, master = _target(settings)
    if sentinels:
        manager = AsyncSentinel(sentinels, sentinel_kwargs=SENTINEL_KWARGS)  # type: ignore[no-untyped-call]
        client: aioredis.Redis = manager.master_for(
            master, redis_class=aioredis.Redis, **{"socket_connect_timeout": CONNECT_TIMEOUT_S,
                                                   **_url_options(url), **options})
        return client
    return aioredis.Redis.from_url(url, **options)


def same_server(conn: redis.Redis, **options: Any) -> redis.Redis:
    """Another client of the server `conn` talks to (the primary, if through Sentinel), with `options`
    replacing the connection options (timeouts, retries)."""
    pool = conn.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
    kwargs.update(options)
    if isinstance(pool, SentinelConnectionPool):
        client: redis.Redis = pool.sentinel_manager.master_for(pool.service_name, redis_class=redis.Redis, **kwargs)
        return client
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


REPLICATION_PROBE = keys.REPLICATION_PROBE
UNREPLICATED = Counter("voicequeue_redis_unreplicated_writes", "Submissions answered before enough replicas "
                       "acknowledged them (Redis WAIT timed out).", [])


def wait_for_replicas(conn: redis.Redis, settings: CommonSettings,
                      holding: Sequence[tuple[str, str]] = ()) -> int | None:
    """Block until `redis_wait_replicas` replicas hold every write made so far, or the timeout passes;
    returns how many acknowledged (None: waiting is off).

    WAIT counts the writes of the connection it runs on, and a pooled client spreads a request's
    writes over several. So it follows a write of its own on the same connection: the replication
    stream is ordered, so a replica that has this probe has everything written before it.

    That holds only for writes to this same server. In a failover a request's writes can be split
    between the old primary and the new one (a connection retried onto the new one, or opened on
    a restarted old primary a lagging Sentinel still names), and WAIT on one says nothing of the
    other. So `holding` names a hash field of each thing the request wrote, `(key, field)`; if this
    server lacks any, the request is refused (ConnectionError), not acknowledged.
    """
    timeout_ms = settings.redis_wait_ms
    if timeout_ms <= 0:
        return None
    pipe = conn.pipeline(transaction=False)
    pipe.set(REPLICATION_PROBE, time.time(), px=60_000)
    pipe.execute_command("WAIT", settings.redis_wait_replicas, timeout_ms)  # type: ignore[no-untyped-call]
    pipe.execute_command("INFO", "server")  # type: ignore[no-untyped-call]  # which server took the writes
    for key, field in holding:
        pipe.hexists(key, field)
    _, acked, info, *held = pipe.execute()
    missing = [key for (key, _), present in zip(holding, held, strict=True) if not present]
    if missing:
        log.warning("a request's writes are not all on the server that would confirm them",
                    extra={"run_id": info["run_id"], "missing": missing})
        raise redis.ConnectionError("a Redis failover split this request's writes between two servers")
    acked = int(acked)
    if acked < settings.redis_wait_replicas:
        pool = conn.connection_pool
        if isinstance(pool, SentinelConnectionPool) and not named_primary(pool.sentinel_manager,
                                                                          pool.service_name, info["run_id"]):
            # Right after a failover, a restarted old primary takes writes until the Sentinels demote it
            # and it resyncs, dropping them; a lagging Sentinel can still send new connections there.
            log.warning("write landed on a server the Sentinels do not name as primary",
                        extra={"run_id": info["run_id"]})
            raise redis.ConnectionError("the write landed on a Redis server that is not the agreed primary")
        UNREPLICATED.inc()
        log.warning("write not yet on a replica",
                    extra={"replicas_acked": acked, "wanted": settings.redis_wait_replicas, "timeout_ms": timeout_ms})
    return acked


def named_primary(manager: Sentinel, service: str, run_id: str) -> bool:
    """Whether most of the Sentinels that answer name the server with `run_id` as the primary."""
    votes = []
    for sentinel in manager.sentinels:
        try:
            state: dict[str, Any] = sentinel.sentinel_master(service)  # type: ignore[assignment]
        except redis.RedisError:
            continue
        votes.append(state.get("runid") == run_id and not (state.get("is_sdown") or state.get("is_odown")))
    return bool(sum(votes) * 2 > len(votes))
