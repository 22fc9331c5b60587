"""Settings: `.env.example` documents every field of every settings class."""

from __future__ import annotations

from pathlib import Path

from shared import envdoc
from voicequeue.cli import settings_sections

REPO = Path(__file__).resolve().parents[1]


def test_env_example_is_current() -> None:
    expected = envdoc.render(settings_sections())
    assert (REPO / ".env.example").read_text() == expected, "run: voicequeue env-example > .env.example"


def test_every_field_is_documented() -> None:
    for _title, cls in settings_sections():
        for field, info in cls.model_fields.items():
            assert info.description, f"{cls.__name__}.{field} has no description"


def test_env_prefix(monkeypatch) -> None:
    from services.gateway.config import GatewaySettings

    monkeypatch.setenv("VQ_MAX_UPLOAD_MB", "3")
    monkeypatch.setenv("VQ_REDIS_URL", "redis://example:1/2")
    s = GatewaySettings()
    assert s.max_upload_bytes == 3 * 1024 * 1024 and s.redis_url == "redis://example:1/2"
