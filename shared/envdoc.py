"""Rendering `.env.example` from the settings classes, so the documented settings never drift from the code.

The caller (the CLI, which sits above the services) names the classes: shared code never imports a service.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings

# (section title, settings class) in .env.example's order; a field shows under the first class that has it.
Sections = Iterable[tuple[str, type[BaseSettings]]]


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


def render(sections: Sections) -> str:
    lines = ["# Every voicequeue setting, with its default. Copy to .env and uncomment what you change.", ""]
    seen: set[str] = set()
    for title, cls in sections:
        prefix = str(cls.model_config.get("env_prefix", ""))
        fields = [(f, info) for f, info in cls.model_fields.items() if f not in seen]
        if not fields:
            continue
        lines.append(f"# ---- {title} ({cls.__module__}) ----")
        for field, info in fields:
            seen.add(field)
            if info.description:
                lines.append(f"# {info.description}")
            default = "(computed)" if info.default_factory is not None else _value(info.default)
            lines.append(f"# {prefix}{field.upper()}={default}")
        lines.append("")
    return "\n".join(lines)
