"""The job record: one Redis hash per request, keyed by an unguessable id.

Fields: `meta` (kind, plan, priority, inputs, options, tenant), `status`, `error`,
`created_at`, per stage `stage:<name>` (status, timings, attempts, error)
and `result:<name>`, per streamed sentence `chunk:<seq>` (its audio), and
`cost:<item>` counters. Each field is written on its own, so one stage writes
without racing another.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import redis

from shared.tenants import OPEN_TENANT

PLANS: dict[str, list[str]] = {
    "turn": ["asr", "llm", "tts"],
    "transcription": ["asr"],
    "chat": ["llm", "tts"],
    "chat_text": ["llm"],
    "speech": ["tts"],
}

TERMINAL_STATUSES = frozenset({"done", "failed", "cancelled"})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def new_id() -> str:
    return secrets.token_urlsafe(16)


def key(job_id: str) -> str:
    return f"vq:job:{job_id}"


def create(
    conn: redis.Redis,
    *,
    kind: str,
    priority: str,
    inputs: dict[str, Any],
    options: dict[str, Any],
    ttl_s: int,
    plan: list[str] | None = None,
    job_id: str | None = None,
    pipe: redis.client.Pipeline | None = None,
    tenant: str = OPEN_TENANT,
) -> str:
    job_id = job_id or new_id()
    meta = {"kind": kind, "plan": plan or PLANS[kind], "priority": priority, "inputs": inputs, "options": options,
            "tenant": tenant}
    p = pipe if pipe is not None else conn.pipeline()
    p.hset(
        key(job_id),
        mapping={"meta": json.dumps(meta, ensure_ascii=False), "status": "queued", "created_at": time.time()},
    )
    p.expire(key(job_id), ttl_s)
    if pipe is None:
        p.execute()
    return job_id


def load(conn: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """The whole record as plain JSON-ready data, or None for an unknown id."""
    raw = conn.hgetall(key(job_id))
    if not raw or b"meta" not in raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    meta = json.loads(fields["meta"])
    record: dict[str, Any] = {
        "id": job_id,
        "kind": meta["kind"],
        "plan": meta["plan"],
        "priority": meta["priority"],
        "tenant": meta.get("tenant", OPEN_TENANT),
        "status": fields.get("status", "queued"),
        "created_at": float(fields.get("created_at", 0)),
        "inputs": meta["inputs"],
        "options": meta["options"],
        "stages": {},
        "results": {},
        "error": json.loads(fields["error"]) if "error" in fields else None,
    }
    for name in meta["plan"]:
        if f"stage:{name}" in fields:
            record["stages"][name] = json.loads(fields[f"stage:{name}"])
        if f"result:{name}" in fields:
            record["results"][name] = json.loads(fields[f"result:{name}"])
    chunks = [json.loads(v) for k, v in fields.items() if k.startswith("chunk:")]
    record["chunks"] = sorted(chunks, key=lambda c: int(c["seq"]))
    record["cost"] = {k[5:]: float(v) for k, v in fields.items() if k.startswith("cost:")}
    record["ttfa_s"] = float(fields["ttfa_s"]) if "ttfa_s" in fields else None
    return record


def next_stage(plan: list[str], stage: str) -> str | None:
    i = plan.index(stage)
    return plan[i + 1] if i + 1 < len(plan) else None


def put_stage(pipe: redis.client.Pipeline | redis.Redis, job_id: str, stage: str, state: dict[str, Any]) -> None:
    pipe.hset(key(job_id), f"stage:{stage}", json.dumps(state))


def put_result(pipe: redis.client.Pipeline | redis.Redis, job_id: str, stage: str, result: dict[str, Any]) -> None:
    pipe.hset(key(job_id), f"result:{stage}", json.dumps(result, ensure_ascii=False))


def put_status(
    pipe: redis.client.Pipeline | redis.Redis, job_id: str, status: str, error: dict[str, Any] | None = None
) -> None:
    pipe.hset(key(job_id), "status", status)
    if error is not None:
        pipe.hset(key(job_id), "error", json.dumps(error, ensure_ascii=False))


def put_chunk(pipe: redis.client.Pipeline | redis.Redis, job_id: str, seq: int, chunk: dict[str, Any]) -> None:
    """One synthesized sentence of the reply: {seq, blob_id, duration_s, sample_rate, text, …}."""
    pipe.hset(key(job_id), f"chunk:{seq}", json.dumps({**chunk, "seq": seq}, ensure_ascii=False))


def add_cost(pipe: redis.client.Pipeline | redis.Redis, job_id: str, **amounts: float) -> None:
    """Per-turn cost accounting: audio_s, prompt_tokens, completion_tokens, tts_characters, cache_hits."""
    for item, amount in amounts.items():
        pipe.hincrbyfloat(key(job_id), f"cost:{item}", amount)


def status(conn: redis.Redis, job_id: str) -> str | None:
    value = conn.hget(key(job_id), "status")
    return _text(value) if value else None


def blob_ids(record: dict[str, Any]) -> list[str]:
    """Every blob a job owns, so deleting the job can remove them."""
    ids = [record["inputs"].get("blob_id")]
    for result in record["results"].values():
        ids.append(result.get("blob_id"))
        ids.extend(c.get("blob_id") for c in result.get("chunks", []) if isinstance(c, dict))
    ids.extend(c.get("blob_id") for c in record.get("chunks", []))
    return [i for i in ids if i]
