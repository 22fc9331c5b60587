"""Tenants: one tenant can neither read, stream nor delete another's jobs, sessions, batches or blobs.

Runs its own stack (gateway and workers on their own Redis, sharing the session stack's llama.cpp
server): creating a key switches auth on for every client of that Redis, and the shared stack's
tests send no key. Another tenant's id must answer exactly like an unknown one: same status,
same code, same message, so its existence does not leak.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.gateway import keystore
from shared import jobs, sessions
from shared.tenants import OPEN_TENANT
from tests.conftest import started_stack
from tests.gateway.helpers import read_sse, wait_finished
from tests.stack import Stack, free_port, wait_http

CLIP = "en_short/jfk.flac"


@pytest.fixture(scope="module")
def own(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Short replies keep the file fast; isolation does not depend on their length.
    with started_stack(tmp_path_factory, "tenants", stack.llm_base_url,
                       {"VQ_LLM_MAX_TOKENS": "48", "VQ_LLM_TEMPERATURE": "0"}) as s:
        yield s


@pytest.fixture(scope="module")
def db(own: Stack) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(own.redis_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def keys(db: redis.Redis) -> Iterator[dict[str, str]]:
    plain_a, key_a = keystore.create(db, "tenant-a")
    plain_b, key_b = keystore.create(db, "tenant-b")
    yield {"a": plain_a, "b": plain_b}
    keystore.revoke(db, key_a.key_id)
    keystore.revoke(db, key_b.key_id)


def _client(stack: Stack, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=stack.base_url, headers=headers, timeout=300)


@pytest.fixture(scope="module")
def a(own: Stack, keys: dict[str, str]) -> Iterator[httpx.Client]:
    with _client(own, keys["a"]) as c:
        yield c


@pytest.fixture(scope="module")
def b(own: Stack, keys: dict[str, str]) -> Iterator[httpx.Client]:
    with _client(own, keys["b"]) as c:
        yield c


def same_as_unknown(client: httpx.Client, method: str, path: str, real_id: str, fake_id: str,
                    **kwargs: Any) -> None:
    """`client` asking for someone else's `real_id` gets exactly what an unknown id of the same length gets."""
    got = client.request(method, path.format(id=real_id), **kwargs)
    unknown = client.request(method, path.format(id=fake_id), **kwargs)
    assert got.status_code == unknown.status_code == 404, (method, path, got.status_code, got.text)
    assert got.text == unknown.text.replace(fake_id, real_id), (method, path)
    assert got.headers.get("content-type") == unknown.headers.get("content-type")
    assert got.headers.get("content-length") == unknown.headers.get("content-length")


def _fake_like(real_id: str) -> str:
    return "x" * len(real_id)


# First in the file on purpose: auth is off until the `keys` fixture creates the first key.
def test_auth_off_until_a_key_exists_then_on(own: Stack, db: redis.Redis) -> None:
    log = (own.log_dir / "gateway.log").read_text()
    assert "auth is OFF" in log
    with _client(own) as anyone:
        ready = anyone.get("/readyz").json()
        assert ready["auth"] == "off"
        r = anyone.post("/v1/chat", json={"text": "Say hi.", "speak": False})
        assert r.status_code == 202, r.text
        job = jobs.load(db, r.json()["id"])
        assert job is not None and job["tenant"] == OPEN_TENANT
        assert anyone.get(f"/v1/jobs/{job['id']}").status_code == 200
        assert anyone.delete(f"/v1/jobs/{job['id']}").status_code == 204  # frees the LLM for the next tests

        plain, key = keystore.create(db, "tenant-tmp")
        try:
            assert anyone.get("/readyz").json()["auth"] == "on"
            refused = anyone.get(f"/v1/jobs/{job['id']}")
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "missing_api_key"
            assert refused.headers["www-authenticate"].startswith("Bearer")
            # The open tenant's job is not the key holder's either.
            assert anyone.get(f"/v1/jobs/{job['id']}",
                              headers={"Authorization": f"Bearer {plain}"}).status_code == 404
        finally:
            keystore.revoke(db, key.key_id)
        # Revoking the last key must not open the API again; only deleting the marker does.
        assert anyone.get("/readyz").json()["auth"] == "on"
        assert anyone.get(f"/v1/jobs/{job['id']}").status_code == 401
        db.delete(keystore.AUTH_ON)
        assert anyone.get("/readyz").json()["auth"] == "off"


def test_missing_bad_and_revoked_keys_are_401(own: Stack, db: redis.Redis, keys: dict[str, str]) -> None:
    plain, key = keystore.create(db, "tenant-c")
    with _client(own) as anyone, _client(own, plain) as c:
        for public in ("/healthz", "/readyz", "/metrics", "/", "/openapi.json"):
            assert anyone.get(public).status_code == 200, public
        for headers, code in [({}, "missing_api_key"), ({"Authorization": "Basic dXNlcjpwdw=="}, "missing_api_key"),
                              ({"Authorization": "Bearer"}, "missing_api_key"),
                              ({"Authorization": "Bearer vq_00000000_guess"}, "invalid_api_key"),
                              ({"Authorization": f"Bearer {plain}x"}, "invalid_api_key")]:
            r = anyone.post("/v1/chat", json={"text": "hello", "speak": False}, headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["error"]["code"] == code
        created = c.post("/v1/chat", json={"text": "Say hello.", "speak": False})
        assert created.status_code == 202
        assert c.get(f"/v1/jobs/{created.json()['id']}").status_code == 200
        assert c.delete(f"/v1/jobs/{created.json()['id']}").status_code == 204

        assert keystore.revoke(db, key.key_id) is not None
        for method, path in [("GET", f"/v1/jobs/{created.json()['id']}"), ("GET", "/v1/sessions/s1"),
                             ("POST", "/v1/chat")]:
            r = c.request(method, path, json={"text": "hello"} if method == "POST" else None)
            assert r.status_code == 401, (method, path)
            assert r.json()["error"]["code"] == "invalid_api_key"


def test_jobs_are_invisible_to_other_tenants(a: httpx.Client, b: httpx.Client, db: redis.Redis) -> None:
    text = "Say good morning in one short sentence, then a second one."
    links = a.post("/v1/chat", json={"text": text, "stream": True}).json()
    evs = read_sse(a, links["events_url"])
    assert evs[-1]["event"] == "job.done"
    job_id = links["id"]
    assert jobs.load(db, job_id)["tenant"] == "tenant-a"  # type: ignore[index]
    assert any(e["event"] == "tts.chunk" for e in evs)
    fake = _fake_like(job_id)

    # B guesses the id, or reuses A's URLs (event replay included): all exactly like an unknown job.
    for method, path, kwargs in [
        ("GET", "/v1/jobs/{id}", {}),
        ("GET", "/v1/jobs/{id}/events", {}),
        ("GET", "/v1/jobs/{id}/events?after=" + evs[1]["id"], {}),
        ("GET", "/v1/jobs/{id}/events", {"headers": {"Last-Event-ID": evs[2]["id"]}}),
        ("GET", "/v1/jobs/{id}/audio", {}),
        ("GET", "/v1/jobs/{id}/audio?wait=2", {}),
        ("GET", "/v1/jobs/{id}/audio/stream", {}),
        ("GET", "/v1/jobs/{id}/audio/stream?format=pcm", {}),
        ("GET", "/v1/jobs/{id}/chunks/0", {}),
        ("DELETE", "/v1/jobs/{id}", {}),
    ]:
        same_as_unknown(b, method, path, job_id, fake, **kwargs)
    for url in (links["status_url"], links["events_url"], links["audio_url"], links["audio_stream_url"]):
        assert b.get(url).status_code == 404, url

    # A still has everything: B's DELETE touched nothing.
    assert a.get(links["status_url"]).json()["status"] == "done"
    assert a.get(links["audio_url"]).status_code == 200
    assert a.get(f"/v1/jobs/{job_id}/chunks/0").status_code == 200
    assert [e["id"] for e in read_sse(a, links["events_url"])] == [e["id"] for e in evs]

    # And A's own DELETE works, after which A gets the unknown-id answer too.
    assert a.delete(links["status_url"]).status_code == 204
    same_as_unknown(a, "GET", "/v1/jobs/{id}", job_id, fake)


def test_openai_endpoints_create_jobs_of_the_caller(a: httpx.Client, b: httpx.Client, speech: Path,
                                                    db: redis.Redis) -> None:
    spoken = a.post("/v1/audio/speech", json={"input": "Hello there.", "response_format": "wav"})
    assert spoken.status_code == 200, spoken.text
    with (speech / CLIP).open("rb") as f:
        heard = b.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", f)}, data={"language": "en"})
    assert heard.status_code == 200, heard.text
    assert "country" in heard.json()["text"].lower()
    for client, other, job_id, owner in [(a, b, spoken.headers["x-job-id"], "tenant-a"),
                                         (b, a, heard.headers["x-job-id"], "tenant-b")]:
        record = jobs.load(db, job_id)
        assert record is not None and record["tenant"] == owner
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
        same_as_unknown(other, "GET", "/v1/jobs/{id}", job_id, _fake_like(job_id))
    blob_id = jobs.load(db, heard.headers["x-job-id"])["inputs"]["blob_id"]  # type: ignore[index]
    assert db.hget(f"vq:blob:{blob_id}", "tenant") == b"tenant-b"


def test_same_session_id_two_tenants_two_histories(a: httpx.Client, b: httpx.Client,
                                                   db: redis.Redis) -> None:
    def say(client: httpx.Client, text: str) -> dict[str, Any]:
        links = client.post("/v1/chat", json={"text": text, "session_id": "s1", "speak": False}).json()
        final = read_sse(client, links["events_url"])[-1]
        assert final["event"] == "job.done", final
        return dict(final["data"]["job"]["results"]["llm"])

    say(a, "Hello! My name is Alice.")
    say(b, "Hello! My name is Bob.")
    reply_a = say(a, "What is my name?")
    reply_b = say(b, "What is my name?")
    assert reply_a["history_turns"] == reply_b["history_turns"] == 1
    # Each LLM call saw only its own tenant's history.
    assert "bob" not in reply_a["text"].lower()
    assert "alice" not in reply_b["text"].lower()

    got_a, got_b = a.get("/v1/sessions/s1").json(), b.get("/v1/sessions/s1").json()
    assert [t["content"] for t in got_a["turns"] if t["role"] == "user"] == [
        "Hello! My name is Alice.", "What is my name?"]
    assert [t["content"] for t in got_b["turns"] if t["role"] == "user"] == [
        "Hello! My name is Bob.", "What is my name?"]
    assert db.exists(sessions.key("s1", "tenant-a"), sessions.key("s1", "tenant-b")) == 2

    # B forgetting its "s1" leaves A's alone; then B's "s1" answers like any unknown session.
    assert b.delete("/v1/sessions/s1").status_code == 204
    same_as_unknown(b, "GET", "/v1/sessions/{id}", "s1", "s9")
    same_as_unknown(b, "DELETE", "/v1/sessions/{id}", "s1", "s9")
    assert a.get("/v1/sessions/s1").json()["turns"] == got_a["turns"]
    assert a.delete("/v1/sessions/s1").status_code == 204


def test_batches_and_their_inputs_are_invisible_to_other_tenants(a: httpx.Client, b: httpx.Client,
                                                                 speech: Path, db: redis.Redis) -> None:
    audio = (speech / CLIP).read_bytes()
    r = a.post("/v1/batches", files=[("files", ("jfk.flac", audio))], data={"language": "en"})
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    member_job = r.json()["calls"][0]["job_id"]
    assert jobs.load(db, member_job)["tenant"] == "tenant-a"  # type: ignore[index]
    summary = wait_finished(a, batch_id, 300)
    assert summary["counts"]["done"] == 1

    fake = _fake_like(batch_id)
    for method, path, kwargs in [
        ("GET", "/v1/batches/{id}", {}),
        ("GET", "/v1/batches/{id}/results", {}),
        ("GET", "/v1/batches/{id}/results?format=csv", {}),
        ("POST", "/v1/batches/{id}/files", {"files": [("files", ("again.flac", audio))]}),
        ("DELETE", "/v1/batches/{id}", {}),
    ]:
        same_as_unknown(b, method, path, batch_id, fake, **kwargs)
    same_as_unknown(b, "GET", "/v1/jobs/{id}", member_job, _fake_like(member_job))
    assert a.get(f"/v1/batches/{batch_id}").json()["calls"] == 1  # B's upload did not land in it
    rows = a.get(f"/v1/batches/{batch_id}/results").text
    assert "country" in rows.lower()

    # Batch inputs by id: A's own uploaded job is accepted; from B, A's job and blob ids are unknown.
    blob_id = jobs.load(db, member_job)["inputs"]["blob_id"]  # type: ignore[index]
    for ident in (member_job, blob_id):
        got = b.post("/v1/batches", json={"inputs": [ident]})
        unknown = b.post("/v1/batches", json={"inputs": [_fake_like(ident)]})
        assert got.status_code == unknown.status_code == 400
        assert got.json()["error"]["code"] == "unknown_input"
        assert got.text == unknown.text.replace(_fake_like(ident), ident)
    mine = a.post("/v1/batches", json={"inputs": [member_job], "options": {"language": "en"}})
    assert mine.status_code == 202, mine.text
    second = wait_finished(a, mine.json()["id"], 300)
    assert second["counts"]["done"] == 1


def test_no_key_material_in_metrics_or_logs(own: Stack, keys: dict[str, str], db: redis.Redis) -> None:
    with _client(own, keys["a"]) as c:
        assert c.get("/v1/jobs/nope").status_code == 404
        metrics = c.get("/metrics").text
    assert "voicequeue_http_requests" in metrics
    secrets_ = [*keys.values(), *(k.split("_", 2)[2] for k in keys.values())]  # secrets may hold "_"
    digests = [d.decode() if isinstance(d, bytes) else d for d in db.hkeys(keystore.KEYS_BY_HASH)]
    assert digests
    for text in [metrics, *(p.read_text(errors="replace") for p in own.log_dir.glob("*.log"))]:
        for secret in secrets_:
            assert secret not in text
        for digest in digests:
            assert digest not in text
        assert "Bearer vq_" not in text
    for tenant in ("tenant-a", "tenant-b"):
        assert tenant not in metrics


def test_auth_required_before_any_key(redis_url: str, tmp_path: Path) -> None:
    """VQ_AUTH_REQUIRED=true (as compose sets it): no key exists yet, and still nothing is served without one.
    A gateway alone on the session's bare Redis (this module's `db` is the own stack's)."""
    db = redis.Redis.from_url(redis_url)
    db.flushdb()
    port = free_port()
    env = {**os.environ, "VQ_REDIS_URL": redis_url, "VQ_GATEWAY_PORT": str(port), "VQ_AUTH_REQUIRED": "true",
           "VQ_LOG_JSON": "true"}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "voicequeue"), "gateway"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as anyone:
            assert anyone.get("/readyz").json()["auth"] == "on"
            r = anyone.post("/v1/chat", json={"text": "hello", "speak": False})
            assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
            plain, _ = keystore.create(db, "tenant-d")
            ok = anyone.post("/v1/chat", json={"text": "hello", "speak": False},
                             headers={"Authorization": f"Bearer {plain}"})
            assert ok.status_code == 202, ok.text
            assert jobs.load(db, ok.json()["id"])["tenant"] == "tenant-d"  # type: ignore[index]
    finally:
        proc.terminate()
        proc.wait(15)
        db.flushdb()
        db.close()
    assert "auth is OFF" not in log.read_text()
