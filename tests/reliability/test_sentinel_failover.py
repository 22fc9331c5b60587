"""Redis failover through Sentinel, with real redis-server and redis-sentinel processes on loopback.

One primary, one replica, three Sentinels (down after 1 s). The gateway, an llm worker and
the CLI find the primary through the Sentinels. A client submits continuously (text chats
answered from a FAQ, so no model runs); the primary is killed with SIGKILL, then started again
following the new primary (as deploy/k8s starts a Redis pod). Every submission
that got a 202 must complete (the gateway answered only once a replica held the job: WAIT 1),
and every refusal meanwhile must be a quick, clean 503 with
Retry-After. The failover time and the refusals are printed for the record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from shared import jobs
from tests.reliability.partial import partial_stack
from tests.sentinel_cluster import SentinelCluster, running
from tests.stack import Stack, _voicequeue, free_port

QUESTION = "What are your opening hours?"
ANSWER = "We are open from nine to six, Monday to Friday."


@dataclass
class Attempt:
    sent: float
    took: float
    status: int
    code: str = ""
    retry_after: str | None = None
    job_id: str | None = None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with running(tmp_path_factory.mktemp("sentinel")) as c:
        yield c


@pytest.fixture(scope="module")
def ha_stack(cluster: SentinelCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import os
    import subprocess

    env = {**cluster.env, "VQ_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",  # answers come from the FAQ
           "VQ_RATE_LIMIT_PER_S": "0", "VQ_REDIS_WAIT_TIMEOUT_MS": "1000"}
    faq = tmp_path_factory.mktemp("sentinel-faq") / "faq.yaml"
    faq.write_text(f"- question: {QUESTION}\n  answer: {ANSWER}\n")
    loaded = subprocess.run([_voicequeue(), "faq", "load", str(faq), "--global", "--language", "en"],
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr  # the CLI found the primary through the Sentinels
    primary = redis.Redis(port=cluster.primary_port() or 0)
    with partial_stack(cluster.env["VQ_REDIS_URL"], tmp_path_factory.mktemp("sentinel-logs"), ("llm",),
                       env, conn=primary) as s:
        yield s


def submit_until(stop: threading.Event, base_url: str, out: list[Attempt]) -> None:
    """A well-behaved client: submits back to back, and after a 503 waits its Retry-After."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        n = 0
        while not stop.is_set():
            n += 1
            start = time.monotonic()
            r = client.post("/v1/chat", json={"text": QUESTION, "language": "en", "speak": False})
            a = Attempt(start, time.monotonic() - start, r.status_code, retry_after=r.headers.get("Retry-After"))
            if r.status_code == 202:
                a.job_id = r.json()["id"]
            elif r.headers.get("content-type", "").startswith("application/json"):
                a.code = r.json()["error"]["code"]
            out.append(a)
            if r.status_code == 503 and a.retry_after:
                stop.wait(float(a.retry_after))
            else:
                stop.wait(0.05)


def wait_done(cluster: SentinelCluster, ids: list[str], timeout_s: float = 120) -> dict[str, str | None]:
    deadline = time.monotonic() + timeout_s
    states: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        conn = redis.Redis(port=cluster.primary_port() or 0, socket_timeout=2)
        try:
            states = {i: jobs.status(conn, i) for i in ids}
        except redis.RedisError:
            continue
        finally:
            conn.close()
        if all(s == "done" for s in states.values()):
            return states
        time.sleep(0.5)
    return states


def where(cluster: SentinelCluster, job_id: str) -> str:
    """The job's status on each server, and which one the Sentinels name: evidence for a lost job."""
    seen = []
    for name, port in cluster.ports.items():
        if name in ("primary", "replica"):
            conn = redis.Redis(port=port, socket_timeout=2)
            try:
                seen.append(f"{name} ({conn.info('replication')['role']}): {jobs.status(conn, job_id)}")
            except redis.RedisError as exc:
                seen.append(f"{name}: {exc}")
            finally:
                conn.close()
    return f"{'; '.join(seen)}; Sentinels name port {cluster.primary_port()}"


def test_killing_the_primary_loses_no_acknowledged_job(cluster: SentinelCluster, ha_stack: Stack) -> None:
    attempts: list[Attempt] = []
    stop = threading.Event()
    client = threading.Thread(target=submit_until, args=(stop, ha_stack.base_url, attempts))
    client.start()
    try:
        time.sleep(4)
        before = sum(a.status == 202 for a in attempts)
        killed_at = time.monotonic()
        old = cluster.kill_primary()
        new = cluster.wait_new_primary(old)
        promoted_at = time.monotonic()
        cluster.restart("primary")  # the old primary comes back as a replica of the new one, as in k8s
        deadline = time.monotonic() + 30
        while sum(a.status == 202 and a.sent > promoted_at for a in attempts) < 20:
            assert time.monotonic() < deadline, "submissions were not accepted again after the failover"
            time.sleep(0.2)
    finally:
        stop.set()
        client.join(60)
    assert before >= 5, attempts
    assert new != old

    accepted = [a for a in attempts if a.status == 202]
    refused = [a for a in attempts if a.status != 202]
    for a in refused:  # clean refusals, not errors or hangs
        assert (a.status, a.code) == (503, "redis_unavailable"), a
        assert a.retry_after is not None and int(a.retry_after) >= 1, a
    assert max(a.took for a in attempts) < 10, "a submission hung"
    states = wait_done(cluster, [a.job_id for a in accepted if a.job_id])
    lost = [i for i, s in states.items() if s != "done"]
    first_after = min(a.sent + a.took for a in accepted if a.sent + a.took > killed_at)
    print(f"\nsentinel failover: new primary named {promoted_at - killed_at:.2f} s after SIGKILL; first 202 "
          f"after the kill at +{first_after - killed_at:.2f} s; submissions {len(attempts)}, accepted "
          f"{len(accepted)}, refused {len(refused)} (503 redis_unavailable, longest "
          f"{max((a.took for a in refused), default=0):.2f} s); acknowledged jobs lost: {len(lost)}")
    named = promoted_at - killed_at
    assert lost == [], {a.job_id: f"sent at {a.sent - killed_at:+.2f} s, answered at {a.sent + a.took - killed_at:+.2f}"
                        f" s (new primary named at {named:+.2f} s); {where(cluster, a.job_id)}"
                        for a in accepted if a.job_id in lost}
    assert len(states) == len(accepted)
