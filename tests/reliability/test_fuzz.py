"""Schemathesis against the published /openapi.json of the running stack: no 5xx, no schema violations.

Runs the schemathesis CLI (its own process, as an outside client would) with a fixed seed so a
failure reproduces; then empties the queues so the jobs it created do not slow later tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import redis
from rq import Queue

from shared import queues
from tests.stack import Stack

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
])
MIN_EXAMPLES = 300


def _empty_queues(redis_url: str) -> None:
    conn = redis.Redis.from_url(redis_url)
    for name in queues.all_names():
        Queue(name, connection=conn).empty()
    conn.close()


def test_schemathesis_finds_no_server_errors(stack: Stack, tmp_path: Path) -> None:
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{stack.base_url}/openapi.json",
           "--checks", CHECKS, "--phases", "examples,coverage,fuzzing", "--max-examples", "25",
           "--workers", "1", "--seed", "20261121", "--request-timeout", "120",
           "--suppress-health-check", "all", "--no-color"]
    try:
        run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    finally:
        _empty_queues(stack.redis_url)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    generated = re.search(r"(\d+) generated", report)
    assert generated, report[-3000:]
    assert int(generated.group(1)) >= MIN_EXAMPLES, report[-3000:]
    assert "Server error" not in report
