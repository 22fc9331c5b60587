"""SIGTERM mid-job: a real TTS worker finishes the job it holds, starts no other, and exits 0.

This is what Kubernetes (terminationGracePeriodSeconds) and compose (stop_grace_period)
rely on when they scale a worker down or roll it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import jobs, queues
from shared.config import CommonSettings
from tests.conftest import wait_port
from tests.stack import VENV_BIN, free_port

# About 100 s of speech: piper needs several seconds for it on 2 cores, long enough to signal mid-job.
LONG_TEXT = " ".join(
    f"Sentence number {i} of this long reply says that your parcel left our warehouse this morning "
    f"and should arrive at your door before the end of the week." for i in range(1, 13)
)


def _stage_state(conn: redis.Redis, job_id: str) -> dict[str, Any]:
    record = jobs.load(conn, job_id)
    assert record is not None
    return dict(record["stages"].get("tts", {}), job_status=record["status"])


def _wait_running(conn: redis.Redis, job_id: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited early with {proc.returncode}"
        if _stage_state(conn, job_id).get("status") == "running":
            return
        time.sleep(0.02)
    raise TimeoutError(f"job never started: {_stage_state(conn, job_id)}")


@pytest.mark.parametrize("fork", [False, True], ids=["in-process", "forking"])
def test_sigterm_lets_the_running_job_finish_and_starts_no_other(
    conn: redis.Redis, redis_url: str, tmp_path: Path, fork: bool
) -> None:
    settings = CommonSettings(redis_url=redis_url)
    port = free_port()
    env = {**os.environ, "VQ_REDIS_URL": redis_url, "VQ_TTS_METRICS_PORT": str(port), "VQ_TTS_ENGINE": "piper",
           "VQ_WORKER_FORK": str(fork).lower(), "VQ_LOG_JSON": "true"}
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([str(VENV_BIN / "voicequeue"), "worker", "tts"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, 60, proc)
        long_job = jobs.create(conn, kind="speech", priority="live", inputs={"text": LONG_TEXT}, options={},
                               ttl_s=600)
        next_job = jobs.create(conn, kind="speech", priority="live", inputs={"text": "Hello there."}, options={},
                               ttl_s=600)
        assert queues.enqueue(conn, settings, long_job, "tts", "live")
        assert queues.enqueue(conn, settings, next_job, "tts", "live")
        _wait_running(conn, long_job, proc, 60)
        time.sleep(0.5)  # well inside the synthesis
        assert _stage_state(conn, long_job)["status"] == "running"
        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(120)
        waited = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
    output = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
    assert code == 0, f"worker exited with {code}:\n{output}"
    finished = _stage_state(conn, long_job)
    assert finished["status"] == "done" and finished["job_status"] == "done", finished
    assert float(finished["run_s"]) > 1.0, finished  # it really was mid-job when signalled
    assert waited > 0.3, "the worker exited without waiting for its job"
    untouched = _stage_state(conn, next_job)
    assert untouched["status"] == "queued" and untouched["job_status"] == "queued", untouched
    # The second job is still waiting on its queue for the next worker: nothing was lost.
    assert conn.lrange("rq:queue:tts:live", 0, -1) == [queues.rq_job_id(next_job, "tts").encode()]
