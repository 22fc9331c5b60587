"""A batch of recorded calls: one Redis hash naming its member jobs.

Fields of the batch hash (`shared.keys`): meta (options, created_at, tenant), the
count of members so far, per member its record (file, hash, duration_s, job_id — or
the reason the file was refused) and per content hash its member's seq, so the same
recording sent twice (a resumed upload) is one call. Counts, audio seconds and the ETA are derived
from the member jobs' records on every read, never stored twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from typing import Any

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RqJob

from shared import events, jobs, keys, queues, retention
from shared.blobs import RedisBlobStore
from shared.config import CommonSettings
from shared.jobs import Job, JobError, JobStatus
from shared.redisio import text
from shared.tenants import OPEN_TENANT

KIND = "call"
STATUSES = ("queued", "running", "done", "failed", "cancelled")


def key(batch_id: str) -> str:
    return keys.batch(batch_id)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plan(options: dict[str, Any]) -> list[str]:
    return ["asr", "llm"] if options.get("analysis") else ["asr"]


def create(conn: redis.Redis, options: dict[str, Any], ttl_s: int, tenant: str = OPEN_TENANT) -> str:
    batch_id = secrets.token_urlsafe(12)
    meta = {"options": options, "created_at": time.time(), "tenant": tenant}
    pipe = conn.pipeline()
    pipe.hset(key(batch_id), mapping={keys.BATCH_META: json.dumps(meta, ensure_ascii=False), keys.BATCH_COUNT: 0})
    pipe.expire(key(batch_id), ttl_s)
    pipe.execute()
    return batch_id


def meta(conn: redis.Redis, batch_id: str) -> dict[str, Any] | None:
    raw = conn.hget(key(batch_id), keys.BATCH_META)
    if not raw:
        return None
    info: dict[str, Any] = json.loads(text(raw))
    info.setdefault("tenant", OPEN_TENANT)  # batches made before tenants existed
    return info


def owned_meta(conn: redis.Redis, batch_id: str, tenant: str) -> dict[str, Any] | None:
    """The batch's meta if `tenant` owns it; None for an unknown batch and for another tenant's alike."""
    info = meta(conn, batch_id)
    return info if info is not None and info["tenant"] == tenant else None


def claim(conn: redis.Redis, batch_id: str, sha: str) -> tuple[int, dict[str, Any] | None]:
    """A seq for new content, or the member already holding it (None while its job is being created)."""
    held = conn.hget(key(batch_id), keys.batch_hash_field(sha))
    if held is None:
        seq = int(conn.hincrby(key(batch_id), keys.BATCH_COUNT, 1))
        if conn.hsetnx(key(batch_id), keys.batch_hash_field(sha), seq):
            return seq, None
        held = conn.hget(key(batch_id), keys.batch_hash_field(sha))
    seq = int(text(held or b"0"))
    raw = conn.hget(key(batch_id), keys.batch_member_field(seq))
    return seq, json.loads(text(raw)) if raw else {"seq": seq, "hash": sha, "pending": True}


def put_member(conn: redis.Redis, batch_id: str, seq: int, member: dict[str, Any], ttl_s: int) -> dict[str, Any]:
    member = {**member, "seq": seq}
    pipe = conn.pipeline()
    pipe.hset(key(batch_id), keys.batch_member_field(seq), json.dumps(member, ensure_ascii=False))
    pipe.expire(key(batch_id), ttl_s)
    pipe.execute()
    return member


def add_call(
    conn: redis.Redis,
    settings: CommonSettings,
    batch_id: str,
    seq: int,
    *,
    data: bytes,
    content_type: str,
    filename: str,
    sha: str,
    info: dict[str, Any],
    options: dict[str, Any],
    tenant: str = OPEN_TENANT,
    written: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Store one accepted recording and enqueue its job on `asr:batch`; the job and blob belong to `tenant`.
    `written` gets a hash field of each thing stored (`connection.wait_for_replicas` checks them)."""
    job_id = jobs.new_id()
    blob_id = RedisBlobStore(conn).put(data, content_type, settings.blob_ttl_s, tenant=tenant)
    inputs = {"blob_id": blob_id, "filename": filename, **info}
    call_plan = plan(options)
    pipe = conn.pipeline()
    jobs.create(conn, kind=KIND, priority="batch", inputs=inputs, options={**options, "batch_id": batch_id},
                ttl_s=settings.job_ttl_s, plan=call_plan, job_id=job_id, pipe=pipe, tenant=tenant)
    events.append(pipe, job_id, "job.created", {"kind": KIND, "plan": call_plan}, settings.job_ttl_s)
    pipe.execute()
    member = put_member(conn, batch_id, seq, {"file": filename, "hash": sha, "duration_s": info["duration_s"],
                                              "job_id": job_id}, settings.job_ttl_s)
    queues.enqueue(conn, settings, job_id, call_plan[0], "batch", float(info["duration_s"]))
    if written is not None:
        written += [(RedisBlobStore.key(blob_id), keys.BLOB_DATA), (key(batch_id), keys.batch_member_field(seq)),
                    *queues.written(job_id, call_plan[0])]
    return member


def members(conn: redis.Redis, batch_id: str) -> list[dict[str, Any]]:
    raw = conn.hgetall(key(batch_id))
    found = [json.loads(text(v)) for k, v in raw.items() if text(k).startswith(keys.BATCH_MEMBER_PREFIX)]
    return sorted(found, key=lambda m: int(m["seq"]))


def _state(member: dict[str, Any], record: Job | None) -> tuple[str, dict[str, Any] | None]:
    """A member's status and error. A finished call with no words is failed: the recording was silent."""
    if "job_id" not in member:
        return JobStatus.FAILED, member.get("error")
    if record is None:
        return JobStatus.FAILED, {"reason": "expired", "message": "the call's job record has expired"}
    if record.status == JobStatus.DONE and not (record.results.asr.text if record.results.asr else "").strip():
        return JobStatus.FAILED, {"reason": "no_speech", "message": "no speech was found in the recording"}
    return record.status, _error(record.error)


def _error(error: JobError | None) -> dict[str, Any] | None:
    return error.wire() if error is not None else None


def records(conn: redis.Redis, found: list[dict[str, Any]]) -> list[Job | None]:
    return [jobs.fetch(conn, m["job_id"]) if "job_id" in m else None for m in found]


def _finished_at(record: Job | None) -> float:
    if record is None:
        return 0.0
    return max((s.finished_at or 0.0 for s in record.stages.values()), default=0.0)


def summary(conn: redis.Redis, batch_id: str) -> dict[str, Any] | None:
    info = meta(conn, batch_id)
    if info is None:
        return None
    found = members(conn, batch_id)
    recs = records(conn, found)
    counts = dict.fromkeys(STATUSES, 0)
    done_s = total_s = pending_s = 0.0
    failures = []
    last = 0.0
    for member, record in zip(found, recs, strict=True):
        status, error = _state(member, record)
        counts[status] = counts.get(status, 0) + 1
        duration = float(member.get("duration_s") or 0.0)
        total_s += duration
        if status in ("queued", "running"):
            pending_s += duration
        elif status == "done":
            done_s += duration
        if status == "failed":
            failures.append({"file": member.get("file"), "hash": member.get("hash"), "job_id": member.get("job_id"),
                             "reason": (error or {}).get("reason"), "message": (error or {}).get("message")})
        last = max(last, _finished_at(record))
    finished = pending_s == 0 and counts["queued"] == counts["running"] == 0
    elapsed = max((last if finished else time.time()) - info["created_at"], 1e-6)
    rate = done_s / elapsed
    eta = 0.0 if finished else (pending_s / rate if rate > 0 else None)
    return {
        "id": batch_id, "created_at": info["created_at"], "options": info["options"], "calls": len(found),
        "counts": counts, "finished": finished, "partial": finished and counts["failed"] > 0,
        "audio_s_done": round(done_s, 3), "audio_s_total": round(total_s, 3), "elapsed_s": round(elapsed, 3),
        "audio_s_per_s": round(rate, 4), "eta_s": None if eta is None else round(eta, 1), "failures": failures,
    }


def _timings(record: Job) -> dict[str, Any]:
    out: dict[str, Any] = {f"{name}_s": state.run_s for name, state in record.stages.items()}
    asr = record.stage("asr")
    out["queue_wait_s"] = asr.queue_wait_s if asr is not None else None
    if (end := _finished_at(record)) and record.created_at:
        out["total_s"] = round(end - record.created_at, 3)
    return out


def result(member: dict[str, Any], record: Job | None) -> dict[str, Any]:
    """One call's row: what JSONL holds and CSV, SRT and VTT are made from."""
    status, error = _state(member, record)
    asr = record.results.asr if record is not None else None
    analysis = record.analysis if record is not None else None
    return {
        "file": member.get("file"), "hash": member.get("hash"), "job_id": member.get("job_id"), "status": status,
        "duration_s": member.get("duration_s"), "language": asr.language if asr else None,
        "channels": asr.channels if asr else None,
        "segments": [{"start": s.start, "end": s.end, "speaker": s.speaker, "text": s.text,
                      "low_confidence": s.low_confidence} for s in (asr.segments if asr else [])],
        "text": asr.text if asr else None, "analysis": analysis.analysis if analysis else None,
        "timings": _timings(record) if record else {}, "error": error,
    }


def results(conn: redis.Redis, batch_id: str) -> list[dict[str, Any]]:
    found = members(conn, batch_id)
    return [result(m, r) for m, r in zip(found, records(conn, found), strict=True)]


def cancel(conn: redis.Redis, settings: CommonSettings, batch_id: str) -> int:
    """Cancel the calls no worker has started; running and finished ones are left alone."""
    cancelled = 0
    for member in members(conn, batch_id):
        job_id = member.get("job_id")
        if not job_id or jobs.status(conn, job_id) != JobStatus.QUEUED:
            continue
        pipe = conn.pipeline()
        jobs.put_status(pipe, job_id, JobStatus.CANCELLED)
        events.append(pipe, job_id, "job.cancelled", {"id": job_id}, settings.job_ttl_s)
        pipe.execute()
        # The worker skips a cancelled job anyway; deleting its rq job just frees the queue.
        with contextlib.suppress(NoSuchJobError, InvalidJobOperation):
            RqJob.fetch(queues.rq_job_id(job_id, "asr"), connection=conn).delete()
        cancelled += 1
    return cancelled


def purge(conn: redis.Redis, batch_id: str) -> int:
    """Remove a batch and everything of its calls (records, events, uploads, rq jobs); returns keys deleted."""
    removed = sum(retention.purge_job(conn, m["job_id"]) for m in members(conn, batch_id) if m.get("job_id"))
    return removed + int(conn.delete(key(batch_id)))
