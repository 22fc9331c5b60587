"""A streamed reply's audio: each sentence's chunk, and the whole reply as it is produced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse

from services.gateway import reply_audio
from services.gateway.deps import AsyncRedisDep, BlobsDep, RedisDep, SettingsDep, TenantDep
from services.gateway.errors import ApiError
from services.gateway.eventstream import follow
from services.gateway.routes.jobs import load_or_404
from services.gateway.waiting import failure_status
from shared import events, jobs
from shared.jobs import Job

router = APIRouter(tags=["jobs"])
_END: Any = object()


@router.get("/v1/jobs/{job_id}/chunks/{seq}", responses={200: {"content": {"audio/wav": {}}}})
def job_chunk(job_id: str, seq: Annotated[int, Path(ge=0)], conn: RedisDep, blobs: BlobsDep,
              tenant: TenantDep) -> Response:
    """One sentence of the reply as WAV, as soon as its `tts.chunk` event is out."""
    load_or_404(conn, job_id, tenant)
    chunk = jobs.get_chunk(conn, job_id, seq)
    if chunk is None:
        raise ApiError(404, "chunk_not_found", f"job {job_id!r} has no audio chunk {seq} (yet)")
    if chunk.error is not None or not chunk.blob_id:
        error = chunk.error.wire() if chunk.error is not None else None
        raise ApiError(409, "chunk_failed", f"chunk {seq} of job {job_id!r} failed: {error}")
    blob = blobs.get(chunk.blob_id)
    if blob is None:
        raise ApiError(410, "audio_expired", "the chunk's audio has expired")
    return Response(blob[0], media_type=blob[1])


async def _whole_reply(conn: redis.Redis, blobs: BlobsDep, job: Job) -> tuple[bytes, int]:
    """A job that produced no chunk events: its whole reply, when it is WAV."""
    result = job.results.tts
    blob = await asyncio.to_thread(blobs.get, result.blob_id) if result is not None and result.blob_id else None
    if blob is None or result is None or (result.format or "wav") != "wav":
        raise ApiError(409, "no_stream", "this job's reply audio cannot be streamed (no chunks, not WAV)")
    return reply_audio.wav_pcm(blob[0])


@router.get("/v1/jobs/{job_id}/audio/stream",
            responses={200: {"content": {"audio/wav": {}, "application/octet-stream": {}}}})
async def job_audio_stream(
    job_id: str,
    conn: RedisDep,
    aconn: AsyncRedisDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    tenant: TenantDep,
    format: Annotated[Literal["wav", "pcm"], Query(description="wav (length unknown) or raw s16le PCM")] = "wav",
) -> StreamingResponse:
    """The reply audio as it is produced: each sentence's PCM in order, as soon as it is synthesized.

    Answers once the first chunk exists (its rate goes in `X-Sample-Rate`), so a client starts playing
    while the LLM is still writing the rest of the answer.
    """
    record = await asyncio.to_thread(load_or_404, conn, job_id, tenant)
    if "tts" not in record.plan:
        raise ApiError(404, "no_audio", "this job does not produce audio")
    order = reply_audio.ChunkOrder()
    feed = follow(aconn, job_id, idle_s=settings.sse_keepalive_s,
                  timeout_s=settings.stream_first_chunk_wait_s + settings.reply_wait_s)
    final: events.Event | None = None
    async for event in feed:
        if event is None:
            continue
        order.feed(event)
        if order.first is not None:
            break
        if event[1] in events.TERMINAL:
            final = event
            break
    else:
        raise ApiError(504, "timeout", f"no audio from job {job_id} in time")
    whole: bytes | None = None
    if order.first is not None:
        rate = int(order.first["sample_rate"])
    elif final is not None and final[1] == "job.done":
        whole, rate = await _whole_reply(conn, blobs, Job.from_wire(final[2]["job"]))
    elif final is not None and final[1] == "job.failed":
        error = final[2]["error"]
        raise ApiError(failure_status(error), error["reason"], error["message"])
    else:
        raise ApiError(409, "cancelled", f"job {job_id} was cancelled")

    async def body() -> AsyncIterator[bytes]:
        try:
            if format == "wav":
                yield reply_audio.streaming_wav_header(rate)
            if whole is not None:
                yield whole
                return
            while True:
                for seq in order.take():
                    got = await asyncio.to_thread(reply_audio.chunk_pcm, conn, job_id, seq, rate)
                    if got is not None:
                        yield got[0]
                if order.finished:
                    return
                event = await anext(feed, _END)
                if event is _END:  # the stream ended or its time is up
                    order.ended = True
                elif event is not None:  # None: a keep-alive tick
                    order.feed(event)
        finally:
            await feed.aclose()

    media = "audio/wav" if format == "wav" else "application/octet-stream"
    headers = {"X-Sample-Rate": str(rate), "X-Channels": "1", "X-Sample-Format": "s16le", "X-Job-Id": job_id,
               "Cache-Control": "no-cache"}
    return StreamingResponse(body(), media_type=media, headers=headers)
