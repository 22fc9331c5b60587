"""The `voicequeue` command: its subcommands exist and the model commands produce real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VOICEQUEUE = str(Path(sys.executable).parent / "voicequeue")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VOICEQUEUE, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_help_lists_commands() -> None:
    out = run("--help").stdout
    for command in ("up", "gateway", "worker", "llm-server", "redis-server", "models", "env-example"):
        assert command in out


def test_convert_whisper(tmp_path: Path) -> None:
    result = run("models", "convert-whisper", "--model", "tiny.en", env={"VQ_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    out = Path(result.stdout.strip().splitlines()[-1])
    assert out.exists() and out.parent.parent == tmp_path
    assert out.stat().st_size > 50_000_000  # tiny.en in fp32 is ~75 MB
    again = run("models", "convert-whisper", "--model", "tiny.en", env={"VQ_CACHE_DIR": str(tmp_path)})
    assert again.returncode == 0 and Path(again.stdout.strip().splitlines()[-1]) == out


def test_unknown_worker_is_refused() -> None:
    result = run("worker", "nope")
    assert result.returncode == 2 and "invalid choice" in result.stderr
