"""Rendering `.env.example` from the settings classes, so the documented settings never drift from the code."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings

SETTINGS = [
    ("common", "shared.config", "CommonSettings"),
    ("gateway", "services.gateway.config", "GatewaySettings"),
    ("asr worker", "services.asr.config", "AsrSettings"),
    ("llm worker and llm-server", "services.llm.config", "LlmSettings"),
    ("tts worker", "services.tts.config", "TtsSettings"),
]


def _value(default: object) -> str:
    if isinstance(default, SecretStr):
        return "<secret>"
    if default is None:
        return ""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (dict, list)):
        return json.dumps(default, ensure_ascii=False)
    if isinstance(default, Path):
        return str(default)
    return str(default)


def render() -> str:
    lines = ["# Every voicequeue setting, with its default. Copy to .env and uncomment what you change.", ""]
    seen: set[str] = set()
    for title, module, name in SETTINGS:
        cls: type[BaseSettings] = getattr(importlib.import_module(module), name)
        prefix = str(cls.model_config.get("env_prefix", ""))
        fields = [(f, info) for f, info in cls.model_fields.items() if f not in seen]
        if not fields:
            continue
        lines.append(f"# ---- {title} ({module}) ----")
        for field, info in fields:
            seen.add(field)
            if info.description:
                lines.append(f"# {info.description}")
            default = "(computed)" if info.default_factory is not None else _value(info.default)
            lines.append(f"# {prefix}{field.upper()}={default}")
        lines.append("")
    return "\n".join(lines)
