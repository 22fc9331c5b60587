"""Retention: every key a turn writes expires, and purging a job or a batch leaves nothing of it in Redis.

In-process checks on the shared functions, then the whole stack as real processes (workers, gateway, a
local fake posing as an outside LLM): real turns, chats, a session and a batch, every key SCANned.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from rq import Queue, SimpleWorker
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job as RqJob
from rq.registry import FailedJobRegistry

from services.gateway import batches
from shared import events, jobs, queues, retention
from shared.blobs import RedisBlobStore
from shared.config import CommonSettings
from tests.conftest import started_stack
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.stack import Stack

SHORT = "en_short/librispeech-61-70968-0000.flac"


def keys_of(conn: redis.Redis, *ids: str) -> list[str]:
    """Every key in Redis whose name holds one of `ids` (a full SCAN, as an auditor would do it)."""
    found = []
    for raw in conn.scan_iter(count=1000):
        key = raw.decode()
        if any(i in key for i in ids):
            found.append(key)
    return sorted(found)


def queued_rq_jobs(conn: redis.Redis) -> set[str]:
    # (rq keeps other keys under the prefix too: `rq:queue:<q>:intermediate:first_seen:<id>` is a string.)
    ids = [i for q in conn.scan_iter(match="rq:queue:*", _type="list") for i in conn.lrange(q, 0, -1)]
    return {f"rq:job:{i.decode() if isinstance(i, bytes) else i}" for i in ids}


def without_ttl(conn: redis.Redis, *ids: str) -> list[str]:
    """Keys of these ids that never expire. rq keeps the hash of a job waiting on a queue without a TTL
    until a worker takes it (bounded by the queue draining), so those are not counted."""
    waiting = queued_rq_jobs(conn)
    return [k for k in keys_of(conn, *ids) if conn.ttl(k) == -1 and k not in waiting]


# --- in-process: the shared functions on a real Redis -----------------------------------------------------

def make_job(conn: redis.Redis, settings: CommonSettings) -> tuple[str, str]:
    """A turn half-way: uploaded audio, asr done, the llm queued, two sentences queued for tts."""
    blobs = RedisBlobStore(conn)
    upload = blobs.put(b"RIFF-upload", "audio/wav", settings.blob_ttl_s)
    job_id = jobs.create(conn, kind="turn", priority="live", inputs={"blob_id": upload, "duration_s": 1.0},
                         options={}, ttl_s=settings.job_ttl_s)
    events.append(conn, job_id, "job.created", {}, settings.job_ttl_s)
    jobs.put_result(conn, job_id, "asr", {"text": "call me on 13812345678"})
    queues.enqueue(conn, settings, job_id, "llm", "live")
    sentence = blobs.put(b"RIFF-sentence", "audio/wav", settings.blob_ttl_s)
    jobs.put_chunk(conn, job_id, 0, {"blob_id": sentence, "text": "Sure."})
    for seq, text in enumerate(["Sure.", "I will call you."]):
        queues.enqueue_chunk(conn, settings, job_id, seq, text, "live")
    return job_id, sentence


def test_purge_job_leaves_nothing(conn: redis.Redis) -> None:
    settings = CommonSettings(redis_url="redis://unused")
    job_id, sentence = make_job(conn, settings)
    other, _ = make_job(conn, settings)
    record = jobs.load(conn, job_id)
    assert record is not None
    owned = jobs.blob_ids(record)
    assert len(owned) == 2 and sentence in owned
    assert keys_of(conn, job_id) and without_ttl(conn, job_id, *owned) == []
    assert retention.rq_job_ids(conn, job_id, record) == sorted(
        queues.rq_job_id(job_id, s) for s in ("asr", "llm", "tts", "tts0", "tts1"))

    # rq marks a job it finds between dequeue and start (`rq:queue:<q>:intermediate:first_seen:<rq id>`, a
    # day): the marker names the job, so it goes too.
    IntermediateQueue(queues.rq_key("llm:live"), conn).set_first_seen(queues.rq_job_id(job_id, "llm"))
    assert retention.purge_job(conn, job_id) == 4  # record, events, two blobs
    assert keys_of(conn, job_id, *owned) == []
    waiting = Queue("llm:live", connection=conn).get_job_ids() + Queue("tts:live", connection=conn).get_job_ids()
    assert not [i for i in waiting if i.startswith(job_id)]
    assert jobs.load(conn, other) is not None and len(keys_of(conn, other)) >= 2  # the other job is untouched
    assert retention.purge_job(conn, job_id) == 0  # twice is harmless


def test_purge_survives_an_execution_the_worker_just_removed(conn: redis.Redis) -> None:
    """rq's `Job.delete` lists the job's executions, then fetches each: a worker finishing the job in between
    makes it raise ValueError ("Execution ... not found in Redis"). A CI run saw that cut a live call's end
    short, so the call kept its slot. The execution here is listed and its hash is gone, as in that race."""
    settings = CommonSettings(redis_url="redis://unused")
    job_id, _ = make_job(conn, settings)
    rq_id = queues.rq_job_id(job_id, "llm")
    registry = RqJob.fetch(rq_id, connection=conn).execution_registry
    conn.zadd(registry.key, {"gone-execution": time.time() + 60})
    with pytest.raises(ValueError, match="not found in Redis"):  # what rq itself does
        RqJob.fetch(rq_id, connection=conn).delete(remove_from_queue=True)
    conn.zadd(registry.key, {"gone-execution": time.time() + 60})
    assert retention.purge_job(conn, job_id) >= 1
    assert jobs.load(conn, job_id) is None and not conn.exists(RqJob.key_for(rq_id))


def test_purge_removes_failed_rq_jobs_and_can_keep_events_briefly(conn: redis.Redis) -> None:
    """A failed sentence job keeps its text in rq's hash for `failure_ttl`; purging the job removes it."""
    settings = CommonSettings(redis_url="redis://unused")
    job_id, _ = make_job(conn, settings)
    rq_id = queues.rq_job_id(job_id, "tts7")
    Queue("scratch", connection=conn).enqueue("builtins.int", "I will call you on 13812345678.", job_id=rq_id,
                                              failure_ttl=3600)
    conn.hset(jobs.key(job_id), "enq:tts:7", time.time())
    SimpleWorker(["scratch"], connection=conn).work(burst=True)
    failed = FailedJobRegistry("scratch", connection=conn)
    assert rq_id in failed.get_job_ids() and conn.exists(f"rq:job:{rq_id}")

    assert retention.purge_job(conn, job_id, keep_events_s=60) == 3  # record and two blobs
    assert rq_id not in failed.get_job_ids()
    assert keys_of(conn, job_id) == [events.stream_key(job_id)] and 0 < conn.ttl(events.stream_key(job_id)) <= 60


def test_a_late_write_after_purge_is_swept(conn: redis.Redis) -> None:
    """A stage still running when its job is purged adds its cost: the hash comes back with no TTL."""
    settings = CommonSettings(redis_url="redis://unused")
    job_id, _ = make_job(conn, settings)
    retention.purge_job(conn, job_id)
    jobs.add_cost(conn, job_id, prompt_tokens=12)
    conn.set("vq:something:new", "x")  # any other key someone forgot to expire
    assert set(retention.untimed(conn)) == {jobs.key(job_id), "vq:something:new"}
    conn.hset("vq:apikeys", "digest", "k1 acme")  # kept on purpose
    assert retention.sweep(conn, ttl_s=600) == {"orphans_deleted": 1, "ttl_set": 1}
    assert keys_of(conn, job_id) == [] and 0 < conn.ttl("vq:something:new") <= 600
    assert conn.ttl("vq:apikeys") == -1 and retention.untimed(conn) == []


def test_batch_purge_leaves_nothing(conn: redis.Redis) -> None:
    settings = CommonSettings(redis_url="redis://unused")
    batch_id = batches.create(conn, {"language": "en"}, settings.job_ttl_s)
    members = []
    for n, data in enumerate([b"call-one", b"call-two"], 1):
        seq, _ = batches.claim(conn, batch_id, batches.content_hash(data))
        members.append(batches.add_call(conn, settings, batch_id, seq, data=data, content_type="audio/wav",
                                        filename=f"{n}.wav", sha=batches.content_hash(data),
                                        info={"duration_s": 1.0, "sample_rate": 16000, "channels": 1},
                                        options={"language": "en"}))
    seq, _ = batches.claim(conn, batch_id, batches.content_hash(b"broken"))
    batches.put_member(conn, batch_id, seq, {"file": "bad.wav", "error": {"reason": "corrupt"}}, settings.job_ttl_s)
    job_ids = [m["job_id"] for m in members]
    blob_ids = [b for j in job_ids for b in jobs.blob_ids(jobs.load(conn, j) or {})]
    assert len(blob_ids) == 2 and without_ttl(conn, batch_id, *job_ids, *blob_ids) == []

    assert batches.purge(conn, batch_id) == 2 * 3 + 1  # per call: record, events, upload; then the batch
    assert keys_of(conn, batch_id, *job_ids, *blob_ids) == []
    assert Queue("asr:batch", connection=conn).get_job_ids() == []
    assert batches.summary(conn, batch_id) is None


# --- the real stack --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=Reply("Thanks. I have noted that, and a colleague will call you back today.")) as fake:
        yield fake


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI) -> Iterator[Stack]:
    """Its own Redis and workers; the LLM is the fake, treated as an outside service (redaction always)."""
    with started_stack(tmp_path_factory, "retention", fake_llm.base_url,
                       {"VQ_LLM_REDACT_PII": "always", "VQ_DEBUG": "false"}) as stack:
        yield stack


@pytest.fixture
def api(live: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.base_url, timeout=120) as client:
        yield client


@pytest.fixture
def rconn(live: Stack) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(live.redis_url)
    yield conn
    conn.close()


def wait_done(api: httpx.Client, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record: dict[str, Any] = api.get(f"/v1/jobs/{job_id}").json()
        if record["status"] in ("done", "failed", "cancelled"):
            return record
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")


def test_every_key_a_turn_writes_expires_and_delete_removes_it(
    api: httpx.Client, rconn: redis.Redis, live: Stack, fake_llm: FakeOpenAI, speech: Path
) -> None:
    r = api.post("/v1/turns", files={"file": ("q.flac", (speech / SHORT).read_bytes(), "audio/flac")})
    assert r.status_code == 202, r.text
    turn = r.json()["id"]
    chat = api.post("/v1/chat", json={"text": "My number is 13812345678 and my email is ann@example.org, please "
                                              "call me back.", "session_id": "retention-s1"})
    assert chat.status_code == 202, chat.text
    chat_id = chat.json()["id"]
    records = {turn: wait_done(api, turn), chat_id: wait_done(api, chat_id)}
    for record in records.values():
        assert record["status"] == "done", record["error"]
        assert record["chunks"], "the reply was spoken sentence by sentence"
    blob_ids = {j: _blob_ids(r) for j, r in records.items()}
    assert len(blob_ids[turn]) >= 3 and len(blob_ids[chat_id]) >= 2  # upload, reply, sentences

    # Every key these requests left behind expires: job records, events, blobs, the session, the caches,
    # and rq's own hashes (none lingers without a TTL).
    assert without_ttl(rconn, turn, chat_id, *blob_ids[turn], *blob_ids[chat_id]) == []
    assert retention.untimed(rconn) == []
    session_keys = keys_of(rconn, "retention-s1")
    assert session_keys and all(0 < rconn.ttl(k) <= 1800 for k in session_keys)

    # The outside LLM never saw the caller's phone number or email.
    sent = json.dumps([req.body for req in fake_llm.chat_requests])
    assert "13812345678" not in sent and "ann@example.org" not in sent and "[PHONE]" in sent
    assert live.metric("llm", "voicequeue_pii_redactions_total", where="llm") >= 2

    # DELETE: nothing of the job stays but its events stream, kept a minute for listeners to see the cancel.
    for job_id in (turn, chat_id):
        assert api.delete(f"/v1/jobs/{job_id}").status_code == 204
        left = keys_of(rconn, job_id, *blob_ids[job_id])
        assert left == [events.stream_key(job_id)] and 0 < rconn.ttl(left[0]) <= 60, left
        assert api.get(f"/v1/jobs/{job_id}").status_code == 404
    assert api.delete("/v1/sessions/retention-s1").status_code in (200, 204)
    assert keys_of(rconn, "retention-s1") == []

    # No transcript, reply or PII in any process's log (VQ_DEBUG is off).
    transcript = records[turn]["results"]["asr"]["text"].strip()
    reply = records[turn]["results"]["llm"]["text"]
    assert len(transcript) > 20
    for path in live.log_dir.glob("*.log"):
        text = path.read_text(errors="replace")
        for secret in (transcript, reply, "13812345678", "ann@example.org"):
            assert secret not in text, f"{secret!r} in {path.name}"
    worker_lines = [json.loads(line) for line in (live.log_dir / "worker-llm.log").read_text().splitlines()
                    if line.startswith("{")]
    assert worker_lines and all(line["service"] == "llm-worker" for line in worker_lines)


def test_batch_purge_after_a_real_batch(api: httpx.Client, rconn: redis.Redis, speech: Path) -> None:
    files = [("files", (name.split("/")[-1], (speech / name).read_bytes())) for name in (SHORT, "en_short/jfk.flac")]
    r = api.post("/v1/batches", files=files, data={"summarize": "false", "language": "en"})
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    deadline = time.monotonic() + 300
    while not (summary := api.get(f"/v1/batches/{batch_id}").json())["finished"]:
        assert time.monotonic() < deadline, summary
        time.sleep(0.5)
    assert summary["counts"]["done"] == 2, summary
    members = batches.members(rconn, batch_id)
    job_ids = [m["job_id"] for m in members]
    blob_ids = [b for j in job_ids for b in _blob_ids(api.get(f"/v1/jobs/{j}").json())]
    assert len(job_ids) == 2 and len(blob_ids) == 2
    assert without_ttl(rconn, batch_id, *job_ids, *blob_ids) == []

    assert batches.purge(rconn, batch_id) >= 2 * 3 + 1
    assert keys_of(rconn, batch_id, *job_ids, *blob_ids) == []
    assert api.get(f"/v1/batches/{batch_id}").status_code == 404
    assert retention.untimed(rconn) == []


def _blob_ids(record: dict[str, Any]) -> list[str]:
    return jobs.blob_ids(record) if record.get("inputs") else []
