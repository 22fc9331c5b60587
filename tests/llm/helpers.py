"""Helpers shared by the llm tests."""

from __future__ import annotations

from typing import Any

import redis
from prometheus_client import REGISTRY

from services.llm import tasks
from services.llm.config import LlmSettings
from services.llm.embeddings import MiniLM
from services.llm.engines.openai_compat import OpenAICompatEngine
from shared import events, jobs, stage

API_KEY = "sk-test-local"


def settings_for(base_url: str, redis_url: str, **overrides: Any) -> LlmSettings:
    """Quick retries so failure tests stay fast; everything else as deployed."""
    values: dict[str, Any] = {
        "llm_base_url": base_url,
        "llm_api_key": API_KEY,
        "redis_url": redis_url,
        "retry_max_attempts": 3,
        "retry_total_s": 5.0,
        "retry_backoff_s": 0.05,
        "retry_backoff_max_s": 0.2,
        "llm_timeout_s": 5.0,
    }
    return LlmSettings(**(values | overrides))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def all_events(conn: redis.Redis, job_id: str) -> list[events.Event]:
    out: list[events.Event] = []
    after = "0-0"
    while batch := events.read(conn, job_id, after):
        out += batch
        after = batch[-1][0]
    return out


def resources(settings: LlmSettings, embedder: MiniLM | None = None) -> tasks.Resources:
    """What the llm worker loads, made here without asking the server (it may be a fake that counts requests)."""
    return tasks.Resources(settings, OpenAICompatEngine(settings), embedder, {})


def run_llm(conn: redis.Redis, settings: LlmSettings, job_id: str) -> dict[str, Any]:
    stage.run("llm", job_id, conn, settings, tasks.work, resources(settings))
    record = jobs.load(conn, job_id)
    assert record is not None
    return record
