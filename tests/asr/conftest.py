"""ASR test helpers: settings against the test Redis, submitting audio, running the stage in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from services.asr import tasks
from services.asr.config import AsrSettings
from shared import events, jobs, stage
from shared.blobs import RedisBlobStore


@pytest.fixture(scope="session")
def asr_settings(redis_url: str) -> AsrSettings:
    return AsrSettings(redis_url=redis_url)


_LOADED: dict[str, tasks.Resources] = {}


def loaded(settings: AsrSettings) -> tasks.Resources:
    """The ASR service's resources for these settings, loaded once per test session (as a worker would)."""
    key = settings.model_dump_json()
    if key not in _LOADED:
        _LOADED[key] = tasks.load(settings)
    return _LOADED[key]


def submit(conn: redis.Redis, data: bytes, **options: Any) -> str:
    blob_id = RedisBlobStore(conn).put(data, "application/octet-stream", 600)
    return jobs.create(conn, kind="transcription", priority="live", inputs={"blob_id": blob_id},
                       options={"language": None, **options}, ttl_s=600)


def transcribe(conn: redis.Redis, settings: AsrSettings, path: Path, **options: Any) -> dict[str, Any]:
    """Run the ASR stage on a file; returns the finished job record."""
    job_id = submit(conn, path.read_bytes(), **options)
    stage.run("asr", job_id, conn, settings, tasks.work, loaded(settings))
    record = jobs.load(conn, job_id)
    assert record is not None
    return record


def partials(conn: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    return [data for _, type_, data in events.read(conn, job_id) if type_ == "asr.partial"]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0
