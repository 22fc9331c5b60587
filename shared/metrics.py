"""Prometheus metrics for every service, and the hand-off that keeps counts made in forked job processes.

rq runs each job in a forked "horse" that exits right after; anything it counts
in its own registry is lost. So in a horse, `inc`/`observe`/`set_gauge`
buffer their updates, the horse pushes them to Redis when the job ends, and the
parent worker (which serves /metrics) applies them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import connection, keys

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 900)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 15, 60)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 4)

JOBS = Counter("voicequeue_jobs", "Stage executions by outcome.", ["stage", "outcome"])
STAGE_SECONDS = Histogram("voicequeue_stage_run_seconds", "Stage run time.", ["stage"], buckets=STAGE_BUCKETS)
QUEUE_WAIT = Histogram(
    "voicequeue_queue_wait_seconds", "Time a stage waited on its queue.", ["stage", "priority"], buckets=WAIT_BUCKETS
)
RETRIES = Counter("voicequeue_retries", "Retries of outside calls by cause.", ["service", "cause"])
FALLBACKS = Counter("voicequeue_fallbacks", "Engine fallbacks.", ["stage", "from_engine", "to_engine"])
MODEL_LOAD = Gauge("voicequeue_model_load_seconds", "Time to load a model at worker start.", ["stage", "model"])
LLM_TOKENS = Counter("voicequeue_llm_tokens", "LLM tokens.", ["kind"])
LLM_TTFT = Histogram("voicequeue_llm_time_to_first_token_seconds", "LLM time to first token.", buckets=WAIT_BUCKETS)
RTF = Histogram("voicequeue_realtime_factor", "Processing time / audio time.", ["stage"], buckets=RTF_BUCKETS)
AUDIO_SECONDS = Counter("voicequeue_audio_seconds", "Audio processed (ASR input, TTS output).", ["stage"])
TTS_CHARS = Counter("voicequeue_tts_characters", "Characters synthesized.", ["engine"])
CACHE_HITS = Counter("voicequeue_cache_hits", "Cache hits.", ["cache"])
TOOL_CALLS = Counter("voicequeue_llm_tool_calls", "Tool calls in replies (tool: a built-in's name or custom).",
                     ["tool", "status"])
CACHE_MISSES = Counter("voicequeue_cache_misses", "Cache misses.", ["cache"])
TTFA = Histogram("voicequeue_ttfa_seconds", "Time from job creation to the first reply audio ready.",
                 ["kind", "priority"], buckets=STAGE_BUCKETS)

_ALL: dict[str, Counter | Gauge | Histogram] = {
    m._name: m
    for m in (JOBS, STAGE_SECONDS, QUEUE_WAIT, RETRIES, FALLBACKS, MODEL_LOAD, LLM_TOKENS, LLM_TTFT, TOOL_CALLS, RTF,
              AUDIO_SECONDS, TTS_CHARS, CACHE_HITS, CACHE_MISSES, TTFA)
}

_buffer: list[tuple[str, str, dict[str, str], float]] | None = None


def _apply(name: str, op: str, labels: dict[str, str], value: float) -> None:
    metric = _ALL[name]
    target = metric.labels(**labels) if labels else metric
    getattr(target, op)(value)


def _record(metric: Any, op: str, value: float, labels: dict[str, str]) -> None:
    if _buffer is not None:
        _buffer.append((metric._name, op, labels, value))
    else:
        _apply(metric._name, op, labels, value)


def inc(metric: Counter, amount: float = 1.0, **labels: str) -> None:
    _record(metric, "inc", amount, labels)


def observe(metric: Histogram, value: float, **labels: str) -> None:
    _record(metric, "observe", value, labels)


def set_gauge(metric: Gauge, value: float, **labels: str) -> None:
    _record(metric, "set", value, labels)


def buffer_key(worker_name: str) -> str:
    return keys.metrics_handoff(worker_name)


def start_buffering() -> None:
    """Called in a forked job process: hold updates until `flush`."""
    global _buffer
    _buffer = []


def flush(conn: redis.Redis, worker_name: str) -> None:
    global _buffer
    if _buffer:
        conn.rpush(buffer_key(worker_name), *(json.dumps(u) for u in _buffer))
    _buffer = [] if _buffer is not None else None


def drain(conn: redis.Redis, worker_name: str) -> None:
    """In the parent worker: apply what its job processes pushed."""
    pipe = conn.pipeline()
    pipe.lrange(buffer_key(worker_name), 0, -1)
    pipe.delete(buffer_key(worker_name))
    items, _ = pipe.execute()
    for item in items:
        name, op, labels, value = json.loads(item)
        _apply(name, op, labels, value)


class QueueDepthCollector(Collector):
    """Queue depth and oldest waiting job age, read from Redis at scrape time."""

    def __init__(self, conn: redis.Redis, queue_names: list[str]) -> None:
        self.conn = conn
        self.queue_names = queue_names

    def collect(self) -> Any:
        from rq import Queue

        depth = GaugeMetricFamily("voicequeue_queue_depth", "Jobs waiting per queue.", labels=["queue"])
        age = GaugeMetricFamily("voicequeue_queue_oldest_age_seconds", "Age of the oldest waiting job.",
                                labels=["queue"])
        for qname in self.queue_names:
            try:
                q = Queue(qname, connection=self.conn)
                depth.add_metric([qname], q.count)
                head = q.get_job_ids(0, 0)
                job = q.fetch_job(head[0]) if head else None
                enqueued = job.enqueued_at.timestamp() if job and job.enqueued_at else None
                age.add_metric([qname], max(0.0, time.time() - enqueued) if enqueued else 0.0)
            except redis.RedisError:
                break  # Redis is down: one failed queue is enough, each retry costs seconds
        yield depth
        yield age


class WorkersCollector(Collector):
    """Live rq workers per queue and whether Redis answers, read at scrape time.

    `voicequeue_redis_up` is 0 when Redis does not answer, so "Redis down" can be alerted on
    from the gateway's scrape without shipping a redis exporter.
    """

    def __init__(self, conn: redis.Redis, queue_names: list[str]) -> None:
        self.conn = _fail_fast(conn)
        self.queue_names = queue_names

    def collect(self) -> Any:
        from rq import Queue, Worker

        up = GaugeMetricFamily("voicequeue_redis_up", "1 when Redis answered the scrape's PING, else 0.")
        workers = GaugeMetricFamily("voicequeue_workers", "rq workers registered per queue (an llm worker "
                                    "registers one per job it runs at once).", labels=["queue"])
        try:
            self.conn.ping()
            for qname in self.queue_names:
                queue = Queue(qname, connection=self.conn)
                workers.add_metric([qname], Worker.count(connection=self.conn, queue=queue))
            up.add_metric([], 1.0)
        except redis.RedisError:
            up.add_metric([], 0.0)
        yield up
        yield workers


def _fail_fast(conn: redis.Redis) -> redis.Redis:
    """A client to the same Redis that gives up at once: redis-py's default retries would spend
    seconds per call on a dead Redis and push the scrape past Prometheus's timeout."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return connection.same_server(conn, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 0))

# Privacy (shared.redact): PII replaced before text left for an outside LLM ("llm") or reached a log ("log").
PII_REDACTIONS = Counter("voicequeue_pii_redactions", "PII found and replaced, by kind and where.", ["kind", "where"])
_ALL[PII_REDACTIONS._name] = PII_REDACTIONS

# Reliability (shared.reaper, shared.stage): jobs put back after their worker died, stages re-run.
REQUEUED = Counter("voicequeue_requeued_jobs", "Jobs requeued after their worker stopped heartbeating.", ["queue"])
STAGE_RERUNS = Counter("voicequeue_stage_reruns", "Stage attempts after the first (a worker died mid-stage).",
                       ["stage"])
for _m in (REQUEUED, STAGE_RERUNS):
    _ALL[_m._name] = _m

# Redis replication: jobs acknowledged before a replica held them (replica down or behind). Counted where
# WAIT runs (shared.connection, which metrics itself uses, so the counter is defined there).
UNREPLICATED = connection.UNREPLICATED
_ALL[UNREPLICATED._name] = UNREPLICATED
