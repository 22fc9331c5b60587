"""LLM test fixtures: settings aimed at a fake OpenAI server, and the real local llama.cpp server.

`llm_server` starts `voicequeue llm-server` (`services.llm.server`: llama.cpp's
llama-server as a child, warmed) once per session on a free port and waits
until /v1/models answers and the warm-up has logged; reuse it (or copy the
pattern) wherever a test needs the real model.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.llm.helpers import API_KEY
from tests.stack import free_port


def start_server(log_path: Any, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """`voicequeue llm-server` on a free port with `API_KEY`, logging to `log_path`; (process, base URL)."""
    port = free_port()
    full = {**os.environ, "VQ_LLM_SERVER_PORT": str(port), "VQ_LLM_API_KEY": API_KEY, "VQ_LOG_JSON": "true", **env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.llm.server"], env=full, stdout=log,
                                stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/v1"


def wait_warm(proc: subprocess.Popen[bytes], log_path: Any, timeout_s: float = 300) -> None:
    """Until the wrapper logs that its warm-up is done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llm server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if "llm server warm" in log_path.read_text():
            return
        time.sleep(0.3)
    raise TimeoutError(f"llm server not warm within {timeout_s} s")


@contextlib.contextmanager
def warm_server(log_path: Any, **env: str) -> Iterator[str]:
    """A fresh `voicequeue llm-server`, once its warm-up is done; yields its base URL (…/v1)."""
    proc, base_url = start_server(log_path, **env)
    try:
        _wait_models(base_url, proc, log_path, timeout_s=180)
        wait_warm(proc, log_path)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (…/v1) of a real llama.cpp server with the bundled Qwen model, requiring `API_KEY`; shared by
    the session, so its slots hold whatever the tests before asked."""
    with warm_server(tmp_path_factory.mktemp("llm-server") / "server.log") as base_url:
        yield base_url


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
