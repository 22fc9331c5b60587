"""Idempotency-Key on POST /v1/turns, /v1/chat and /v1/batches, against a real gateway process on its own
Redis (no workers, so every created job stays visible on its queue)."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import redis

from services.gateway import idempotency_store, keystore
from shared.tenants import OPEN_TENANT
from tests.conftest import running_redis
from tests.stack import VENV_BIN, free_port, wait_http

CHAT = {"text": "What are your opening hours?", "speak": False}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A gateway that keeps answers up to 1 KB for replay: a batch's listing is larger, and is replayed from
    the batch's current state instead."""
    tmp = tmp_path_factory.mktemp("idempotency")
    with running_redis(tmp / "redis") as url:
        port = free_port()
        env = {**os.environ, "VQ_REDIS_URL": url, "VQ_GATEWAY_PORT": str(port), "VQ_IDEMPOTENCY_MAX_BODY_KB": "1",
               "VQ_RATE_LIMIT_PER_S": "1000", "VQ_RATE_LIMIT_BURST": "1000"}
        with (tmp / "gateway.log").open("ab") as log:
            proc = subprocess.Popen([str(VENV_BIN / "voicequeue"), "gateway"], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
            yield url, port
        finally:
            proc.terminate()
            proc.wait(15)


@pytest.fixture(scope="module")
def keys(gw: tuple[str, int]) -> dict[str, str]:
    conn = redis.Redis.from_url(gw[0])
    made = {t: keystore.create(conn, t)[0] for t in ("a", "b")}
    conn.close()
    return made


@pytest.fixture
def rconn(gw: tuple[str, int]) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(gw[0])
    for pattern in ("rq:queue:*", "vq:job:*", "vq:idem:*", "vq:batch*"):
        for name in conn.scan_iter(pattern):
            conn.delete(name)
    yield conn
    conn.close()


@pytest.fixture
def api(gw: tuple[str, int], keys: dict[str, str], rconn: redis.Redis) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{gw[1]}", timeout=60,
                      headers={"Authorization": f"Bearer {keys['a']}"}) as c:
        yield c


def n_jobs(conn: redis.Redis) -> int:
    return sum(1 for k in conn.scan_iter("vq:job:*") if k.count(b":") == 2)


def test_repeated_key_returns_the_original_job(api: httpx.Client, rconn: redis.Redis) -> None:
    first = api.post("/v1/chat", json=CHAT, headers={"Idempotency-Key": "order-1"})
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    again = api.post("/v1/chat", json=CHAT, headers={"Idempotency-Key": "order-1"})
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    # Same JSON, other key order and spacing: the same request.
    reordered = api.post("/v1/chat", content=b'{ "speak": false,  "text": "What are your opening hours?" }',
                         headers={"Idempotency-Key": "order-1", "Content-Type": "application/json"})
    assert reordered.status_code == 202 and reordered.json()["id"] == first.json()["id"]
    assert n_jobs(rconn) == 1 and rconn.llen("rq:queue:llm:live") == 1
    other = api.post("/v1/chat", json=CHAT, headers={"Idempotency-Key": "order-2"})
    assert other.json()["id"] != first.json()["id"] and n_jobs(rconn) == 2
    plain = api.post("/v1/chat", json=CHAT)  # no key: always a new job
    assert plain.json()["id"] not in (first.json()["id"], other.json()["id"]) and n_jobs(rconn) == 3


def test_same_key_other_body_is_422(api: httpx.Client, rconn: redis.Redis) -> None:
    assert api.post("/v1/chat", json=CHAT, headers={"Idempotency-Key": "k"}).status_code == 202
    r = api.post("/v1/chat", json={**CHAT, "text": "Something else"}, headers={"Idempotency-Key": "k"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused"
    assert n_jobs(rconn) == 1


def test_bad_keys_are_400(api: httpx.Client, rconn: redis.Redis) -> None:
    for bad in (b"x" * 256, b"", "caf\u00e9".encode(), b"tab\there"):
        r = api.post("/v1/chat", json=CHAT, headers={b"Idempotency-Key": bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_idempotency_key", (bad, r.text)
    assert n_jobs(rconn) == 0


def test_refused_request_leaves_the_key_free(api: httpx.Client, rconn: redis.Redis) -> None:
    r = api.post("/v1/chat", json={**CHAT, "text": ""}, headers={"Idempotency-Key": "fix-me"})
    assert r.status_code == 400
    fixed = api.post("/v1/chat", json=CHAT, headers={"Idempotency-Key": "fix-me"})
    assert fixed.status_code == 202 and "idempotent-replayed" not in fixed.headers


def test_concurrent_duplicates_create_one_job(gw: tuple[str, int], keys: dict[str, str],
                                              rconn: redis.Redis) -> None:
    n = 8
    barrier = threading.Barrier(n)
    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{gw[1]}", timeout=60) as c:
            barrier.wait()
            answers.append(c.post("/v1/chat", json=CHAT, headers={
                "Idempotency-Key": "together", "Authorization": f"Bearer {keys['a']}"}))

    threads = [threading.Thread(target=post) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in answers] == [202] * n, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in answers) == n - 1
    assert n_jobs(rconn) == 1 and rconn.llen("rq:queue:llm:live") == 1


def test_tenants_do_not_share_keys(api: httpx.Client, keys: dict[str, str], rconn: redis.Redis) -> None:
    a = api.post("/v1/chat", json=CHAT, headers={"Idempotency-Key": "shared"})
    b = api.post("/v1/chat", json=CHAT, headers={"Idempotency-Key": "shared",
                                                 "Authorization": f"Bearer {keys['b']}"})
    assert a.status_code == b.status_code == 202 and "idempotent-replayed" not in b.headers
    assert a.json()["id"] != b.json()["id"] and n_jobs(rconn) == 2


def test_turn_upload_replayed_across_multipart_boundaries(api: httpx.Client, rconn: redis.Redis,
                                                          speech: Path) -> None:
    """Each request gets its own random multipart boundary; the same file and fields are still the same turn."""
    audio = (speech / "en_short/jfk.flac").read_bytes()
    ids = []
    for _ in range(2):
        r = api.post("/v1/turns", files={"file": ("jfk.flac", audio, "audio/flac")}, data={"language": "en"},
                     headers={"Idempotency-Key": "turn-1"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    assert ids[0] == ids[1] and n_jobs(rconn) == 1 and rconn.llen("rq:queue:asr:live") == 1
    other = api.post("/v1/turns", files={"file": ("jfk.flac", audio[:-1000], "audio/flac")},
                     headers={"Idempotency-Key": "turn-1"})
    assert other.status_code == 422


def test_batch_replay_too_large_to_keep_answers_current_state(api: httpx.Client, rconn: redis.Redis,
                                                              speech: Path) -> None:
    names = ("jfk.flac", "LDC93S1.wav", "LJ050-0131.wav", "sr_english.wav", "jfk.flac")
    files = [("files", (name, (speech / "en_short" / name).read_bytes(), "audio/wav")) for name in names]
    files.append(("files", ("x.wav", b"not audio", "audio/wav")))
    first = api.post("/v1/batches", files=files, data={"language": "en"}, headers={"Idempotency-Key": "b-1"})
    assert first.status_code == 202, first.text
    assert len(first.content) > 1024  # over VQ_IDEMPOTENCY_MAX_BODY_KB: not kept
    again = api.post("/v1/batches", files=files, data={"language": "en"}, headers={"Idempotency-Key": "b-1"})
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    status = again.json()  # GET /v1/batches/{id}: the batch as it is now
    assert status["id"] == first.json()["id"]
    assert status["counts"]["queued"] == 4 and status["counts"]["failed"] == 1, status
    assert len(list(rconn.scan_iter("vq:batch:*"))) >= 1
    assert rconn.llen("rq:queue:asr:batch") == 4  # 4 distinct recordings, queued once


def test_turn_with_wait_replays_the_reply_audio(client: httpx.Client, stack_redis: redis.Redis,
                                                speech: Path) -> None:
    """On the shared stack (auth off, real workers): the reply audio is not copied into the idempotency record;
    a repeat answers with the job's stored audio and the original transcript headers."""
    key = f"wait-{uuid.uuid4()}"
    files = {"file": ("jfk.flac", (speech / "en_short/jfk.flac").read_bytes(), "audio/flac")}
    first = client.post("/v1/turns?wait=true", files=files, headers={"Idempotency-Key": key})
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("audio/") and len(first.content) > 10_000
    record = stack_redis.get(idempotency_store.key(OPEN_TENANT, "/v1/turns", key))
    assert record is not None and len(record) < 4096  # status, headers, job id: no audio
    again = client.post("/v1/turns?wait=true", files=files, headers={"Idempotency-Key": key})
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    for name in ("x-job-id", "x-transcript", "x-reply-text"):
        assert again.headers[name] == first.headers[name]
    assert "country" in unquote(again.headers["x-transcript"]).lower()
