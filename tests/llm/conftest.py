"""LLM test fixtures: settings aimed at a fake OpenAI server, and the real local llama.cpp server.

`llm_server` starts `services.llm.server.command()` once per session on a
free port and waits until /v1/models answers; reuse it (or copy the pattern)
wherever a test needs the real model.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.llm import server
from services.llm.config import LlmSettings
from tests.llm.helpers import API_KEY
from tests.stack import free_port


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (…/v1) of a real llama.cpp server with the bundled Qwen model, requiring `API_KEY`."""
    settings = LlmSettings(llm_server_port=free_port(), llm_api_key=API_KEY)
    base_url = f"http://{settings.llm_server_host}:{settings.llm_server_port}/v1"
    log_path = tmp_path_factory.mktemp("llm-server") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(server.command(settings), env=server.environment(settings), stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        _wait_models(base_url, proc, log_path, timeout_s=180)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_models(base_url: str, proc: subprocess.Popen[bytes], log_path: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llm server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            r = httpx.get(f"{base_url}/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=2)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"llm server did not answer within {timeout_s} s")
