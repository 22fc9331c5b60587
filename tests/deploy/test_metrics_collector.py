"""`voicequeue_workers{queue}` and `voicequeue_redis_up`, read from a real Redis at scrape time."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import redis
from prometheus_client import CollectorRegistry, generate_latest
from rq import Queue, Worker

from shared import metrics, queues
from tests.stack import VENV_BIN, free_port, wait_http


def scrape(conn: redis.Redis) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(metrics.WorkersCollector(conn, queues.all_names()))
    samples = {}
    for family in registry.collect():
        for s in family.samples:
            samples[(s.name, s.labels.get("queue", ""))] = s.value
    assert b"# TYPE voicequeue_workers gauge" in generate_latest(registry)
    return samples


def test_workers_per_queue_follow_rq_registrations(conn: redis.Redis) -> None:
    assert scrape(conn)[("voicequeue_redis_up", "")] == 1.0
    assert all(scrape(conn)[("voicequeue_workers", q)] == 0 for q in queues.all_names())
    worker = Worker([Queue(q, connection=conn) for q in queues.names_for("tts")], connection=conn)
    worker.register_birth()
    try:
        got = scrape(conn)
        assert got[("voicequeue_workers", "tts:live")] == 1 and got[("voicequeue_workers", "tts:batch")] == 1
        assert got[("voicequeue_workers", "asr:live")] == 0
    finally:
        worker.register_death()
    assert scrape(conn)[("voicequeue_workers", "tts:live")] == 0


def test_redis_down_reads_as_zero_without_failing_the_scrape() -> None:
    dead = redis.Redis(port=free_port())  # default retries: the collector must not inherit them
    start = time.perf_counter()
    got = scrape(dead)
    assert time.perf_counter() - start < 1.0, "a dead Redis must not stall the scrape"
    assert got[("voicequeue_redis_up", "")] == 0.0
    assert not [k for k in got if k[0] == "voicequeue_workers"]


def test_gateway_scrape_reports_redis_down_within_the_scrape_timeout(tmp_path: Path) -> None:
    """A real gateway whose Redis does not answer: /metrics still answers, fast, with redis_up 0."""
    port = free_port()
    env = {**os.environ, "VQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "VQ_GATEWAY_PORT": str(port)}
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen([str(VENV_BIN / "voicequeue"), "gateway"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
        start = time.perf_counter()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        elapsed = time.perf_counter() - start
        assert elapsed < 10, f"scrape took {elapsed:.1f} s: past Prometheus's default 10 s scrape timeout"
        assert re.search(r"^voicequeue_redis_up 0\.0$", text, re.M), text[-2000:]
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30).status_code == 503
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        log.close()
