"""The fixture knowledge base: a fictional shop's documents in English and Chinese."""

from __future__ import annotations

from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "knowledge" / "shop"
INJECTION = FIXTURE.parent / "injection"
