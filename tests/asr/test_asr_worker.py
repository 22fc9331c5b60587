"""The ASR worker as its own process: preload, fork-safe engines, jobs from the queue, /metrics."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.asr.config import AsrSettings
from shared import events, jobs, queues, textnorm
from tests.asr.conftest import submit
from tests.conftest import REPO, free_port
from tests.stack import wait_http

CLIPS = [("en_short/jfk.flac", "en"), ("zh/funasr_asr_example.wav", "zh"), ("en_short/LDC93S1.wav", None)]


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if labels.items() <= got.items():
            total += float(m.group(3))
    return total


@pytest.fixture(params=["faster-whisper", "openai-whisper"])
def worker(request: pytest.FixtureRequest, conn: redis.Redis, redis_url: str,
           tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A worker process on a freshly flushed Redis (`conn` flushes before it starts, not after)."""
    port = free_port()
    env = {**os.environ, "VQ_REDIS_URL": redis_url, "VQ_ASR_METRICS_PORT": str(port),
           "VQ_ASR_ENGINE": request.param, "VQ_LOG_JSON": "true"}
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.asr.worker"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/", 120, proc)
        yield request.param, port
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_worker_transcribes_queued_jobs(worker: tuple[str, int], conn: redis.Redis, speech: Path,
                                        references: dict[str, dict[str, str]]) -> None:
    engine, port = worker
    settings = AsrSettings()
    total_audio = 0.0
    for clip, language in CLIPS:
        job_id = submit(conn, (speech / clip).read_bytes(), language=language)
        started = time.monotonic()
        queues.enqueue(conn, settings, job_id, "asr", "live", float(references[clip]["duration_s"]))
        final = events.wait_terminal(conn, job_id, 120)
        assert final is not None and final[1] == "job.done", (clip, final)
        wall = time.monotonic() - started
        result = jobs.load(conn, job_id)["results"]["asr"]  # type: ignore[index]
        assert result["engine"] == engine
        score = textnorm.cer if references[clip]["language"] == "zh" else textnorm.wer
        assert score(references[clip]["transcript"], result["text"]) <= 0.35, (clip, result["text"])
        total_audio += result["duration_s"]
        print(f"{engine} {clip}: {wall:.2f} s wall, rtf {result['rtf']}")

    # Counts made in the job processes reach the parent's /metrics.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
        if metric_value(text, "voicequeue_audio_seconds_total", stage="asr") >= total_audio - 0.01:
            break
        time.sleep(0.2)
    assert metric_value(text, "voicequeue_audio_seconds_total", stage="asr") == pytest.approx(total_audio, abs=0.01)
    assert metric_value(text, "voicequeue_jobs_total", stage="asr", outcome="done") == len(CLIPS)
    assert metric_value(text, "voicequeue_model_load_seconds", model="tiny.en", stage="asr") > 0
