"""Structured logs: context fields on every line, no raw text unless debug, no PII, in-process and in real processes."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from shared import logs
from tests.stack import VENV_BIN, free_port, wait_http

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("tests.logs")


@pytest.fixture
def lines() -> Iterator[Any]:
    """JSON logging as a service sets it up, into a buffer; `lines(debug=...)` re-configures, `.read()` parses."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()

    class Reader:
        def __call__(self, **options: Any) -> Reader:
            logs.setup("test", "INFO", True, **options)
            handler = root.handlers[0]
            assert isinstance(handler, logging.StreamHandler)
            handler.setStream(buffer)
            return self

        def read(self) -> list[dict[str, Any]]:
            text = buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            return [json.loads(line) for line in text.splitlines()]

    yield Reader()(debug=False, redact_pii=True)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_context_fields_on_every_line(lines: Any) -> None:
    with logs.context(job_id="J1", stage="llm"):
        logs.bind(tenant="acme")
        log.info("first")
        with logs.context(stage="tts", seq=2):
            log.warning("nested")
        log.info("again", extra={"stage": "explicit wins"})
    log.info("outside")
    first, nested, again, outside = lines.read()
    assert (first["job_id"], first["stage"], first["tenant"]) == ("J1", "llm", "acme")
    assert (nested["job_id"], nested["stage"], nested["tenant"], nested["seq"]) == ("J1", "tts", "acme", 2)
    assert again["stage"] == "explicit wins" and again["tenant"] == "acme"
    assert "job_id" not in outside and "tenant" not in outside
    assert first["service"] == "test" and first["level"] == "INFO" and first["msg"] == "first"


def test_bind_in_a_worker_thread_reaches_the_request(lines: Any) -> None:
    """A sync FastAPI dependency runs in a thread on a copy of the context; its `bind` must still count."""
    with logs.context(request_id="r1"):
        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(logs.bind,), kwargs={"tenant": "t-7"})
        thread.start()
        thread.join()
        log.info("after the dependency")
    (line,) = lines.read()
    assert line["tenant"] == "t-7" and line["request_id"] == "r1"


def test_text_fields_dropped_unless_debug(lines: Any) -> None:
    fields = {"transcript": "I want to cancel my order", "reply": "Sure, I can help.", "text": "hello",
              "messages": [{"role": "user", "content": "hi"}], "audio": b"RIFF\x00\x00", "attempts": 2,
              "arguments": ("job-1", 0, "Your order ships today.")}  # as rq logs a failed sentence job
    log.info("reply streamed", extra=fields)
    (line,) = lines.read()
    assert line["transcript"] == "<omitted: 25 chars>" and line["reply"] == "<omitted: 17 chars>"
    assert line["messages"] == "<omitted: 1 items>" and line["audio"] == "<6 bytes>" and line["attempts"] == 2
    assert line["arguments"] == "<omitted: 3 items>"
    assert "cancel my order" not in json.dumps(line) and "ships today" not in json.dumps(line)

    lines(debug=True)
    log.info("reply streamed", extra={**fields, "reply": "Call me on 13812345678."})
    (line,) = lines.read()
    assert line["transcript"] == "I want to cancel my order"
    assert line["reply"] == "Call me on [PHONE]."  # debug lets text through, never PII
    assert line["audio"] == "<6 bytes>"


def test_pii_redacted_in_message_fields_and_tracebacks(lines: Any) -> None:
    log.info("caller %s gave %s", "bob@example.com", "4111 1111 1111 1111", extra={"to": "+44 20 7946 0958"})
    try:
        raise ValueError("no account for 13812345678")
    except ValueError:
        log.exception("lookup failed")
    log.info("malformed %s %s", "13912345678")  # args do not match: still logged, still scrubbed
    info, error, malformed = lines.read()
    assert info["msg"] == "caller [EMAIL] gave [CARD]" and info["to"] == "[PHONE]"
    assert error["exc"].endswith("ValueError: no account for [PHONE]") and "Traceback" in error["exc"]
    assert "13912345678" not in malformed["msg"] and "[PHONE]" in malformed["msg"]

    lines(redact_pii=False)
    log.info("caller %s", "bob@example.com")
    (line,) = lines.read()
    assert line["msg"] == "caller bob@example.com"


def test_request_context_middleware(lines: Any) -> None:
    """Each request gets its own request_id; what a sync dependency binds shows on the route's lines."""
    def tenant() -> str:
        logs.bind(tenant="acme")
        return "acme"

    app = FastAPI()
    app.add_middleware(logs.RequestContext)

    @app.get("/x/{job_id}")
    def route(job_id: str, who: str = Depends(tenant)) -> dict[str, str]:
        logs.bind(job_id=job_id)
        log.info("route ran")
        return {"who": who}

    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        assert client.get("/x/J9").json() == {"who": "acme"}
        assert client.get("/x/J10").status_code == 200
    ours = [line for line in lines.read() if line["msg"] == "route ran"]
    assert [(line["job_id"], line["tenant"]) for line in ours] == [("J9", "acme"), ("J10", "acme")]
    assert ours[0]["request_id"] != ours[1]["request_id"]
    log.info("after")
    assert "request_id" not in lines.read()[0]


SCRIPT = """
import logging, sys
from shared import logs
logs.setup("probe", "INFO", True)
with logs.context(job_id="JOB42", stage="asr", tenant="t1"):
    logging.getLogger("probe").info("transcribed", extra={"transcript": "my number is 13812345678"})
    logging.getLogger("rq.worker").info("llm:live: services.llm.tasks.run('x') mail me at bob@example.com")
"""


@pytest.mark.parametrize("debug", ["false", "true"])
def test_a_real_process_reads_vq_debug(debug: str) -> None:
    env = {**os.environ, "VQ_DEBUG": debug, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60,
                          cwd=REPO, check=True)
    first, second = (json.loads(line) for line in done.stderr.splitlines())
    assert (first["job_id"], first["stage"], first["tenant"], first["service"]) == ("JOB42", "asr", "t1", "probe")
    assert first["transcript"] == ("my number is [PHONE]" if debug == "true" else "<omitted: 24 chars>")
    assert second["msg"].endswith("mail me at [EMAIL]") and second["job_id"] == "JOB42"
    assert "13812345678" not in done.stderr and "bob@example.com" not in done.stderr


def test_gateway_logs_no_key_no_text_no_pii(redis_url: str, tmp_path: Path) -> None:
    """The real gateway process: a request with a bearer key, PII in the body and in the query string
    leaves none of them in its logs (uvicorn's access log is off, and would log no headers anyway)."""
    port = free_port()
    env = {**os.environ, "VQ_REDIS_URL": redis_url, "VQ_GATEWAY_PORT": str(port), "VQ_LOG_JSON": "true",
           "VQ_DEBUG": "false"}
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([str(VENV_BIN / "voicequeue"), "gateway"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
            secret = "vq_abcdef_S3cr3tS3cr3tS3cr3t"
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                              headers={"Authorization": f"Bearer {secret}"}) as client:
                client.post("/v1/chat?note=13812345678", json={"text": "My card is 4111 1111 1111 1111, "
                                                               "call 13812345678", "speak": False})
                client.get("/v1/jobs/nope?email=bob@example.com")
                client.post("/v1/chat", content=b"{not json 13812345678")
        finally:
            proc.terminate()
            proc.wait(20)
    text = log_path.read_text()
    assert text.strip(), "the gateway logged nothing at all"
    for leaked in (secret, "S3cr3t", "13812345678", "4111 1111", "bob@example.com", "My card"):
        assert leaked not in text, f"{leaked!r} in the gateway log"
    for line in text.splitlines():
        if line.startswith("{"):
            assert json.loads(line)["service"] == "gateway"
