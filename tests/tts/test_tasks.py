"""The TTS stage on real Redis jobs: in-process through shared.stage.run, and in a real worker process."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from services.tts import synth, tasks
from services.tts.engines.edge import EdgeEngine
from shared import audio, events, jobs, queues, stage
from shared.blobs import RedisBlobStore
from tests.conftest import REPO, free_port
from tests.tts.conftest import make_settings, metric

TEXT = "Your refund was approved and will reach your account within five days."
MANDARIN = "您的退款已经批准了。"


def run_job(conn: redis.Redis, engines: synth.Engines, *, kind: str = "speech", inputs: dict[str, Any] | None = None,
            options: dict[str, Any] | None = None, results: dict[str, dict[str, Any]] | None = None,
            **settings: Any) -> dict[str, Any]:
    s = make_settings(**settings)
    job_id = jobs.create(conn, kind=kind, priority="live", inputs=inputs or {}, options=options or {},
                         ttl_s=s.job_ttl_s)
    for name, result in (results or {}).items():
        jobs.put_result(conn, job_id, name, result)
    engines = dataclasses.replace(engines, edge=EdgeEngine(s))
    stage.run("tts", job_id, conn, s, tasks.work, tasks.Resources(s, engines, {}))
    record = jobs.load(conn, job_id)
    assert record is not None
    return record


def blob_audio(conn: redis.Redis, blob_id: str) -> tuple[audio.AudioInfo, str]:
    blob = RedisBlobStore(conn).get(blob_id)
    assert blob is not None, "the result's blob is missing"
    data, content_type = blob
    return audio.probe(data), content_type


def test_speech_job_stores_a_wav(conn: redis.Redis, local_engines: synth.Engines) -> None:
    before = (metric("voicequeue_tts_characters_total", engine="piper"),
              metric("voicequeue_audio_seconds_total", stage="tts"),
              metric("voicequeue_realtime_factor_count", stage="tts"))
    record = run_job(conn, local_engines, inputs={"text": f"  {TEXT} "})
    assert record["status"] == "done", record["error"]
    result = record["results"]["tts"]
    assert result["engine"] == "piper" and result["voice"] == "en_US-joe-medium"
    assert result["characters"] == len(TEXT) and result["fallback"] is None
    assert result["content_type"] == "audio/wav" and result["sample_rate"] == 22050
    assert 2.0 < result["duration_s"] < 8.0
    assert 0 < result["rtf"] < 2.0  # a sane ratio, not a speed bar: that is bench/, and this runs on busy machines
    info, content_type = blob_audio(conn, result["blob_id"])
    assert content_type == "audio/wav" and info.container == "wav"
    assert abs(info.duration_s - result["duration_s"]) < 0.01 and info.sample_rate == 22050
    assert metric("voicequeue_tts_characters_total", engine="piper") == before[0] + len(TEXT)
    assert metric("voicequeue_audio_seconds_total", stage="tts") == pytest.approx(before[1] + result["duration_s"],
                                                                                 abs=0.01)
    assert metric("voicequeue_realtime_factor_count", stage="tts") == before[2] + 1
    done = [e for e in events.read(conn, record["id"]) if e[1] == "job.done"]
    assert done and done[0][2]["job"]["results"]["tts"]["blob_id"] == result["blob_id"]


def test_turn_speaks_the_llm_answer_in_the_asr_language(conn: redis.Redis, local_engines: synth.Engines) -> None:
    record = run_job(conn, local_engines, kind="turn", inputs={"blob_id": "x", "duration_s": 1.0},
                     results={"asr": {"text": "退款什么时候到？", "language": "zh"}, "llm": {"text": MANDARIN}})
    assert record["status"] == "done", record["error"]
    result = record["results"]["tts"]
    assert (result["engine"], result["voice"], result["language"]) == ("espeak", "cmn", "zh")
    assert result["characters"] == len(MANDARIN) and 1.0 < result["duration_s"] < 5.0
    assert blob_audio(conn, result["blob_id"])[0].duration_s == pytest.approx(result["duration_s"], abs=0.01)


@pytest.mark.parametrize(("fmt", "content_type", "container"), [("mp3", "audio/mpeg", "mp3"),
                                                                 ("opus", "audio/ogg", "ogg")])
def test_compressed_output(conn: redis.Redis, local_engines: synth.Engines, fmt: str, content_type: str,
                           container: str) -> None:
    record = run_job(conn, local_engines, inputs={"text": TEXT}, options={"format": fmt, "speed": 1.25})
    assert record["status"] == "done", record["error"]
    result = record["results"]["tts"]
    info, stored_type = blob_audio(conn, result["blob_id"])
    assert stored_type == content_type == result["content_type"] and info.container == container
    assert info.duration_s == pytest.approx(result["duration_s"], abs=0.1)
    assert info.sample_rate == result["sample_rate"]


def test_edge_fallback_is_in_the_job_record(conn: redis.Redis, local_engines: synth.Engines) -> None:
    before = metric("voicequeue_fallbacks_total", stage="tts", from_engine="edge", to_engine="piper")
    record = run_job(conn, local_engines, inputs={"text": TEXT}, options={"voice": "en-US-AriaNeural"},
                     tts_edge_url=f"ws://127.0.0.1:{free_port()}/edge/v1?TrustedClientToken=x",
                     retry_max_attempts=2)
    assert record["status"] == "done", record["error"]
    result = record["results"]["tts"]
    assert result["engine"] == "piper" and result["voice"] == "en_US-joe-medium"
    assert result["fallback"]["from"] == "edge" and result["fallback"]["to"] == "piper"
    assert result["fallback"]["reason"] == "upstream_unavailable"
    assert metric("voicequeue_fallbacks_total", stage="tts", from_engine="edge", to_engine="piper") == before + 1
    assert blob_audio(conn, result["blob_id"])[0].duration_s > 2.0


@pytest.mark.parametrize(("inputs", "options", "reason"), [
    ({"text": "   "}, {}, "empty_text"),
    ({}, {}, "empty_text"),
    ({"text": "hello"}, {"format": "flac"}, "bad_format"),
    ({"text": "hello"}, {"speed": 10}, "bad_speed"),
    ({"text": "hello"}, {"voice": "nobody"}, "unknown_voice"),
    ({"text": "hello"}, {"engine": "festival"}, "unknown_engine"),
    ({"text": "hello"}, {"language": "xx"}, "unsupported_language"),
    ({"text": "x" * 5001}, {}, "text_too_long"),
])
def test_bad_input_fails_the_job(conn: redis.Redis, local_engines: synth.Engines, inputs: dict[str, Any],
                                 options: dict[str, Any], reason: str) -> None:
    record = run_job(conn, local_engines, inputs=inputs, options=options)
    assert record["status"] == "failed"
    assert record["error"]["stage"] == "tts" and record["error"]["reason"] == reason
    assert record["error"]["message"]
    assert "tts" not in record["results"]


def test_missing_llm_answer_fails(conn: redis.Redis, local_engines: synth.Engines) -> None:
    record = run_job(conn, local_engines, kind="chat", inputs={"text": "question"})
    assert record["status"] == "failed" and record["error"]["reason"] == "missing_input"


@pytest.fixture
def worker(redis_url: str, tmp_path) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "VQ_REDIS_URL": redis_url, "VQ_TTS_METRICS_PORT": str(port), "VQ_LOG_JSON": "true"}
    log = (tmp_path / "tts-worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.tts.worker"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        # piper, then Kokoro and jieba's dictionary: seconds idle, over a minute on a busy machine.
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "tts-worker.log").read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "worker did not start"
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(20)


def scrape(port: int, line_prefix: str) -> float:
    for line in httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_real_worker_forks_with_preloaded_engines(conn: redis.Redis, worker: int) -> None:
    settings = make_settings()
    ids = []
    for text, language in ((TEXT, "en"), (MANDARIN, "zh")):
        job_id = jobs.create(conn, kind="speech", priority="live", inputs={"text": text},
                             options={"language": language}, ttl_s=600)
        assert queues.enqueue(conn, settings, job_id, "tts", "live")
        ids.append(job_id)
    for job_id, engine in zip(ids, ("piper", "kokoro"), strict=True):  # Kokoro: the worker's Mandarin default
        final = events.wait_terminal(conn, job_id, 60)
        assert final is not None and final[1] == "job.done", final
        result = final[2]["job"]["results"]["tts"]
        assert result["engine"] == engine
        assert blob_audio(conn, result["blob_id"])[0].duration_s > 1.0
    # Counts made in the forked job processes reach the parent's /metrics.
    expected = f'voicequeue_tts_characters_total{{engine="piper"}} {float(len(TEXT))}'
    deadline = time.monotonic() + 10
    while scrape(worker, 'voicequeue_tts_characters_total{engine="piper"}') != len(TEXT):
        assert time.monotonic() < deadline, f"expected {expected}"
        time.sleep(0.2)
    assert scrape(worker, 'voicequeue_tts_characters_total{engine="kokoro"}') == len(MANDARIN)
    assert scrape(worker, 'voicequeue_model_load_seconds{model="piper:en_US-joe-medium",stage="tts"}') > 0
    assert scrape(worker, 'voicequeue_model_load_seconds{model="kokoro:zf_xiaoyi",stage="tts"}') > 0


def test_real_worker_speaks_queued_sentences_then_joins_them(conn: redis.Redis, worker: int) -> None:
    """The rq path: `enqueue_chunk` → `run_chunk` in the worker, events in order, then the stage joins."""
    settings = make_settings()
    reply = ["Your refund was approved this morning.", "It will reach your account within five days."]
    job_id = jobs.create(conn, kind="chat", priority="live", inputs={"text": "Where is my refund?"}, options={},
                         ttl_s=600)
    for seq, sentence in enumerate(reply):
        assert queues.enqueue_chunk(conn, settings, job_id, seq, sentence, "live")
    assert not queues.enqueue_chunk(conn, settings, job_id, 0, reply[0], "live")  # once per sentence
    seen: list[dict[str, Any]] = []
    after, deadline = "0-0", time.monotonic() + 60
    while len(seen) < len(reply):
        assert time.monotonic() < deadline, f"only {seen} arrived"
        for event_id, type_, data in events.read(conn, job_id, after, block_ms=1000):
            after = event_id
            if type_ == "tts.chunk":
                seen.append(data)
    assert [d["seq"] for d in seen] == [0, 1] and all(d["url"].endswith(f"/chunks/{d['seq']}") for d in seen)
    jobs.put_result(conn, job_id, "llm", {"text": " ".join(reply),
                                          "chunks": [{"seq": i, "text": s} for i, s in enumerate(reply)]})
    assert queues.enqueue(conn, settings, job_id, "tts", "live")
    final = events.wait_terminal(conn, job_id, 60)
    assert final is not None and final[1] == "job.done", final
    record = final[2]["job"]
    result = record["results"]["tts"]
    assert [c["blob_id"] for c in result["chunks"]] == [c["blob_id"] for c in record["chunks"]]
    assert blob_audio(conn, result["blob_id"])[0].duration_s == pytest.approx(
        sum(c["duration_s"] for c in result["chunks"]), abs=0.002)
    assert record["ttfa_s"] is not None and record["ttfa_s"] < result["duration_s"]
    deadline = time.monotonic() + 10
    while scrape(worker, 'voicequeue_ttfa_seconds_count{kind="chat",priority="live"}') != 1:
        assert time.monotonic() < deadline, "TTFA was not observed once in the worker"
        time.sleep(0.2)
