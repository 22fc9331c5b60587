"""Helpers shared by the llm tests."""

from __future__ import annotations

from typing import Any

from services.llm.config import LlmSettings

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
