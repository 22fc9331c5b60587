"""Creating a job: store its input, write the record, enqueue the plan's first stage.

The enqueue is also the admission: it fails when the first queue is full (429, and what was
written is removed). With replicas to wait for (Sentinel deployments), the job is on one of them
before its id is handed out.
"""

from __future__ import annotations

from typing import Any

import redis
from fastapi import Request

from services.gateway import admission
from services.gateway.config import GatewaySettings
from services.gateway.uploads import CheckedAudio
from shared import connection, events, jobs, keys, queues
from shared.blobs import RedisBlobStore


def submit(
    conn: redis.Redis,
    settings: GatewaySettings,
    *,
    kind: str,
    options: dict[str, Any],
    upload: CheckedAudio | None = None,
    text: str | None = None,
    priority: str = "live",
    tenant: str,
) -> str:
    """The new job's id; the job and its stored audio belong to `tenant`."""
    job_id = jobs.new_id()
    inputs: dict[str, Any] = {}
    if upload is not None:
        blob_id = RedisBlobStore(conn).put(upload.data, upload.content_type, settings.blob_ttl_s, tenant=tenant)
        inputs = {"blob_id": blob_id, "filename": upload.filename, **upload.info.as_dict()}
    if text is not None:
        inputs["text"] = text
    pipe = conn.pipeline()
    jobs.create(conn, kind=kind, priority=priority, inputs=inputs, options=options,
                ttl_s=settings.job_ttl_s, job_id=job_id, pipe=pipe, tenant=tenant)
    events.append(pipe, job_id, "job.created", {"kind": kind, "plan": jobs.PLANS[kind]}, settings.job_ttl_s)
    pipe.execute()
    first = jobs.PLANS[kind][0]
    queue = queues.name(first, priority)
    room = admission.Room(queue, admission.limit(settings, queue))
    try:
        queues.enqueue(conn, settings, job_id, first, priority, float(inputs.get("duration_s") or 0.0), admit=room)
    except admission.QueueFull as full:
        conn.delete(jobs.key(job_id), events.stream_key(job_id))
        if "blob_id" in inputs:
            RedisBlobStore(conn).delete(inputs["blob_id"])
        raise admission.refusal(conn, settings, full) from None
    written = queues.written(job_id, first)
    if "blob_id" in inputs:
        written.append((RedisBlobStore.key(inputs["blob_id"]), keys.BLOB_DATA))
    connection.wait_for_replicas(conn, settings, holding=written)
    return job_id


def links(request: Request, settings: GatewaySettings, job_id: str, audio: bool = True) -> dict[str, str]:
    base = (settings.gateway_public_url or str(request.base_url)).rstrip("/")
    out = {
        "id": job_id,
        "status_url": f"{base}/v1/jobs/{job_id}",
        "events_url": f"{base}/v1/jobs/{job_id}/events",
    }
    if audio:
        out["audio_url"] = f"{base}/v1/jobs/{job_id}/audio"
        out["audio_stream_url"] = f"{base}/v1/jobs/{job_id}/audio/stream"
    return out
