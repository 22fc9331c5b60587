"""POST /v1/audio/speech: OpenAI-compatible text-to-speech; runs the speech plan and waits for it."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from services.gateway import reply_audio
from services.gateway.deps import AsyncRedisDep, BlobsDep, RedisDep, SettingsDep, TenantDep
from services.gateway.errors import ApiError
from services.gateway.submit import submit
from services.gateway.validate import check_text, check_voice
from services.gateway.waiting import wait_done

router = APIRouter(tags=["openai"])

FORMATS = ("wav", "mp3", "opus", "pcm")
MIN_SPEED, MAX_SPEED = 0.25, 4.0


class SpeechRequest(BaseModel):
    model: str = Field("tts-1", description="Accepted for compatibility; the worker's engines are used.")
    input: str = Field(description="The text to speak (at most `speech_max_chars` characters).")
    voice: str = Field("alloy", description="A voice of ours, or an OpenAI voice name (= the default voice).")
    response_format: str = Field("mp3", description="wav, mp3, opus, or pcm (raw s16le, rate in X-Sample-Rate).")
    speed: float = Field(1.0, description="0.25 to 4.0.")


def _check(body: SpeechRequest) -> None:
    if body.response_format not in FORMATS:
        raise ApiError(400, "unsupported_format",
                       f"response_format {body.response_format!r} is not supported: use {', '.join(FORMATS)}")
    if not MIN_SPEED <= body.speed <= MAX_SPEED:
        raise ApiError(400, "bad_speed", f"speed {body.speed:g} is out of range: use {MIN_SPEED} to {MAX_SPEED}")


@router.post("/v1/audio/speech", responses={200: {"content": {"audio/mpeg": {}, "audio/wav": {}}}})
async def speech(
    body: SpeechRequest, conn: RedisDep, aconn: AsyncRedisDep, blobs: BlobsDep, settings: SettingsDep,
    tenant: TenantDep,
) -> Response:
    text = check_text(body.input, settings.speech_max_chars, field="input")
    _check(body)
    fmt = "wav" if body.response_format == "pcm" else body.response_format
    options = {"voice": check_voice(body.voice, settings), "format": fmt, "speed": body.speed, "stream": True}
    job_id = await asyncio.to_thread(submit, conn, settings, kind="speech", options=options, text=text,
                                    tenant=tenant)
    job = await wait_done(aconn, job_id, settings.reply_wait_s, what="speech")
    result = job.results.tts
    blob = await asyncio.to_thread(blobs.get, result.blob_id) if result is not None and result.blob_id else None
    if blob is None or result is None:
        raise ApiError(410, "audio_expired", "the speech audio has expired")
    headers = {"X-Job-Id": job_id, "X-Sample-Rate": str(result.sample_rate)}
    if body.response_format == "pcm":
        pcm, _ = reply_audio.wav_pcm(blob[0])
        return Response(pcm, media_type="audio/pcm", headers={**headers, "X-Sample-Format": "s16le",
                                                               "X-Channels": "1"})
    return Response(blob[0], media_type=blob[1], headers=headers)
