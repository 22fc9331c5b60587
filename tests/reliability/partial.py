"""Part of a stack as real processes: a gateway and only the workers a test needs.

A test that exercises one stage (the llm worker answering from its cache) or none
(admission, which must refuse while nothing drains the queue) does not need the
ASR and TTS models loaded; `/readyz` then stays 503, so readiness here is the
gateway's `/healthz` plus each wanted worker registered in rq.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.llm.conftest import wait_warm
from tests.stack import Stack, free_port, wait_http


def wait_workers(conn: redis.Redis, stages: tuple[str, ...], stack: Stack, timeout_s: float = 120) -> None:
    """Until an rq worker listens on `<stage>:live` for every stage (a dead process fails at once)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, proc in stack.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {stack.log_dir}/{name}.log")
        listening = set()
        for worker in conn.smembers("rq:workers"):
            queues = conn.hget(worker, "queues") or b""
            listening.update(queues.decode().split(","))
        if all(f"{stage}:live" in listening for stage in stages):
            return
        time.sleep(0.2)
    raise TimeoutError(f"workers {stages} did not register within {timeout_s} s")


@contextlib.contextmanager
def llm_server(log_dir: Path) -> Iterator[str]:
    """The local llama.cpp server alone (`voicequeue llm-server`) on a free port; yields its /v1 URL."""
    s = Stack("redis://unused", log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    import os

    port = free_port()
    s.env = {**os.environ, "VQ_LLM_SERVER_PORT": str(port)}
    try:
        proc = s.spawn("llm-server", "llm-server")
        wait_http(f"http://127.0.0.1:{port}/v1/models", 180, proc)
        # Warm first, as a long-running server is: its warm-up pieces run in idle gaps and would add up to a
        # piece's time to a job, which the Retry-After estimates under test do not count.
        wait_warm(proc, log_dir / "llm-server.log")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        s.stop()


@contextlib.contextmanager
def partial_stack(redis_url: str, log_dir: Path, stages: tuple[str, ...] = (),
                  env: dict[str, str] | None = None, conn: redis.Redis | None = None) -> Iterator[Stack]:
    """A gateway and one worker per stage in `stages`, on `redis_url` (or what `env` points at)."""
    s = Stack(redis_url, log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    import os

    s.ports = {name: free_port() for name in ("gateway", "asr", "llm", "tts")}
    s.env = {**os.environ, "VQ_REDIS_URL": redis_url, "VQ_GATEWAY_PORT": str(s.ports["gateway"]),
             "VQ_ASR_METRICS_PORT": str(s.ports["asr"]), "VQ_LLM_METRICS_PORT": str(s.ports["llm"]),
             "VQ_TTS_METRICS_PORT": str(s.ports["tts"]), "VQ_LOG_JSON": "true", **(env or {})}
    try:
        for stage in stages:
            s.spawn(f"worker-{stage}", "worker", stage)
        gateway = s.spawn("gateway", "gateway")
        wait_http(f"{s.base_url}/healthz", 60, gateway)
        if stages:
            own = conn or redis.Redis.from_url(redis_url)
            wait_workers(own, stages, s)
        yield s
    finally:
        s.stop()
