"""The one Redis connection factory, against real redis-server and redis-sentinel processes:
clients find the primary through the Sentinels, WAIT counts real replica acknowledgements."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

from shared import connection, metrics
from shared.config import CommonSettings
from tests.sentinel_cluster import MASTER, SentinelCluster, running


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with running(tmp_path_factory.mktemp("conn-sentinel")) as c:
        yield c


def settings(cluster: SentinelCluster, **more: object) -> CommonSettings:
    return CommonSettings(redis_url="redis://ignored/0", redis_sentinels=cluster.sentinels,
                          redis_sentinel_master="voicequeue", **more)  # type: ignore[arg-type]


def test_sentinel_addresses_parse_and_refuse_nonsense() -> None:
    assert connection.sentinel_addresses("a:1, b:26380,,c") == [("a", 1), ("b", 26380), ("c", 26379)]
    assert connection.sentinel_addresses("") == []
    with pytest.raises(ValueError, match="not host:port"):
        connection.sentinel_addresses("a:b")


def test_wait_defaults_follow_the_topology(cluster: SentinelCluster) -> None:
    assert CommonSettings(redis_sentinels="").redis_wait_ms == 0
    assert settings(cluster).redis_wait_ms == 500
    assert settings(cluster, redis_wait_timeout_ms=0).redis_wait_ms == 0


def test_clients_reach_the_primary_through_the_sentinels(cluster: SentinelCluster) -> None:
    conn = connection.connect(settings(cluster))
    conn.set("vq:test:where", "primary")
    assert conn.info("server")["tcp_port"] == cluster.primary_port()
    assert conn.info("replication")["role"] == "master"
    other = connection.same_server(conn, socket_timeout=2)
    assert other.get("vq:test:where") == b"primary"

    async def read() -> bytes | None:
        aconn = connection.connect_async(settings(cluster))
        try:
            value: bytes | None = await aconn.get("vq:test:where")
            return value
        finally:
            await aconn.aclose()

    assert asyncio.run(read()) == b"primary"


def test_wait_counts_the_replica_and_does_not_fail_without_it(cluster: SentinelCluster, tmp_path: Path) -> None:
    conn = connection.connect(settings(cluster))
    conn.set("vq:test:job", "x")
    assert connection.wait_for_replicas(conn, settings(cluster)) == 1
    replica = redis.Redis(port=cluster.ports["replica"])
    assert replica.get("vq:test:job") == b"x"  # acknowledged means the replica holds it
    assert connection.wait_for_replicas(conn, settings(cluster, redis_wait_timeout_ms=0)) is None
    cluster.procs["replica"].send_signal(signal.SIGSTOP)  # a replica that stops answering
    try:
        start = time.monotonic()
        before = metrics.UNREPLICATED._value.get()
        assert connection.wait_for_replicas(conn, settings(cluster, redis_wait_timeout_ms=300)) == 0
        assert 0.25 < time.monotonic() - start < 3  # bounded by the timeout, then the job is accepted anyway
        assert metrics.UNREPLICATED._value.get() == before + 1  # and counted, for an alert
    finally:
        cluster.procs["replica"].send_signal(signal.SIGCONT)


def test_only_the_primary_most_sentinels_name_counts(cluster: SentinelCluster) -> None:
    """After a failover a restarted old primary takes writes it will drop when demoted; an unreplicated
    write there must not be acknowledged (`wait_for_replicas` raises instead)."""
    manager = Sentinel(connection.sentinel_addresses(cluster.sentinels),
                       sentinel_kwargs=connection.SENTINEL_KWARGS)
    run_ids = {name: redis.Redis(port=port).info("server")["run_id"] for name, port in cluster.ports.items()
               if name in ("primary", "replica")}
    primary = next(n for n, p in cluster.ports.items() if p == cluster.primary_port())
    other = "replica" if primary == "primary" else "primary"
    assert connection.named_primary(manager, MASTER, run_ids[primary])
    assert not connection.named_primary(manager, MASTER, run_ids[other])


def test_writes_the_confirming_server_lacks_are_not_acknowledged(cluster: SentinelCluster) -> None:
    """In a failover one request's writes can land on two servers (the old primary, then the new one);
    WAIT on one confirms nothing about the other, so a request whose writes it does not all hold is refused."""
    conn = connection.connect(settings(cluster))
    conn.hset("vq:test:record", "meta", "{}")
    conn.hset("vq:test:rqjob", "created_at", "now")
    held = [("vq:test:record", "meta"), ("vq:test:rqjob", "created_at")]
    assert connection.wait_for_replicas(conn, settings(cluster), holding=held) == 1
    conn.delete("vq:test:rqjob")  # as if the enqueue had gone to the other server
    with pytest.raises(redis.ConnectionError, match="split this request's writes"):
        connection.wait_for_replicas(conn, settings(cluster), holding=held)
    conn.hdel("vq:test:record", "meta")
    conn.hset("vq:test:record", "stage:asr", "{}")  # a field a later write added is not the record
    conn.hset("vq:test:rqjob", "created_at", "now")
    with pytest.raises(redis.ConnectionError):
        connection.wait_for_replicas(conn, settings(cluster), holding=held)
