"""Job status, events (SSE), reply audio and deletion."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from services.gateway.deps import AsyncRedisDep, BlobsDep, RedisDep, SettingsDep, TenantDep
from services.gateway.errors import ApiError
from services.gateway.eventstream import follow
from services.gateway.validate import check_event_id
from shared import events, jobs, retention
from shared.jobs import Job, JobStatus

router = APIRouter(tags=["jobs"])

CANCELLED_STREAM_TTL_S = 60


def load_or_404(conn: RedisDep, job_id: str, tenant: str) -> Job:
    """The job if `tenant` owns it. Another tenant's job is answered exactly like an unknown one,
    so ids cannot be probed for existence."""
    record = jobs.fetch(conn, job_id)
    if record is None or record.tenant != tenant:
        raise ApiError(404, "job_not_found", f"no job with id {job_id!r}")
    return record


@router.get("/v1/jobs/{job_id}")
def get_job(job_id: str, conn: RedisDep, tenant: TenantDep) -> dict[str, Any]:
    return load_or_404(conn, job_id, tenant).wire()


def _sse(event: events.Event) -> str:
    event_id, type_, data = event
    return f"id: {event_id}\nevent: {type_}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.get("/v1/jobs/{job_id}/events")
async def job_events(
    job_id: str,
    conn: RedisDep,
    aconn: AsyncRedisDep,
    settings: SettingsDep,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[str | None, Query(description="Replay from after this event id (as Last-Event-ID).")] = None,
) -> StreamingResponse:
    """Server-sent events, replayed from the start or from `Last-Event-ID`; ends after the final event."""
    await asyncio.to_thread(load_or_404, conn, job_id, tenant)
    start = check_event_id(last_event_id or after)

    async def stream() -> AsyncIterator[str]:
        async for event in follow(aconn, job_id, start, settings.sse_keepalive_s):
            yield ": keep-alive\n\n" if event is None else _sse(event)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/jobs/{job_id}/audio", responses={200: {"content": {"audio/wav": {}}}})
async def job_audio(
    job_id: str,
    conn: RedisDep,
    aconn: AsyncRedisDep,
    blobs: BlobsDep,
    tenant: TenantDep,
    wait: Annotated[float, Query(ge=0, le=600, description="Seconds to wait for the audio if not ready.")] = 0,
) -> Response:
    record = await asyncio.to_thread(load_or_404, conn, job_id, tenant)
    if "tts" not in record.plan:
        raise ApiError(404, "no_audio", "this job does not produce audio")
    if wait and not record.finished:
        async for event in follow(aconn, job_id, idle_s=wait, timeout_s=wait):
            if event is None or event[1] in events.TERMINAL:
                break
        record = await asyncio.to_thread(load_or_404, conn, job_id, tenant)
    result = record.results.tts
    if result is None or not result.blob_id:
        if record.status == JobStatus.FAILED and record.error is not None:
            raise ApiError(409, "job_failed", f"the job failed: {record.error.message}")
        raise ApiError(409, "not_ready", f"the reply audio is not ready yet (job status: {record.status.value})")
    blob = await asyncio.to_thread(blobs.get, result.blob_id)
    if blob is None:
        raise ApiError(410, "audio_expired", "the reply audio has expired")
    return Response(blob[0], media_type=blob[1])


@router.delete("/v1/jobs/{job_id}", status_code=204)
def delete_job(job_id: str, conn: RedisDep, settings: SettingsDep, tenant: TenantDep) -> Response:
    """Cancel pending stages and delete everything the job stored (record, audio, queued sentence jobs).
    Listeners get a final `job.cancelled`; the event stream goes a minute later."""
    load_or_404(conn, job_id, tenant)
    jobs.put_status(conn, job_id, JobStatus.CANCELLED)
    events.append(conn, job_id, "job.cancelled", {"id": job_id}, settings.job_ttl_s)
    retention.purge_job(conn, job_id, keep_events_s=CANCELLED_STREAM_TTL_S)
    return Response(status_code=204)
