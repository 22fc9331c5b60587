"""POST /v1/audio/transcriptions: OpenAI-compatible; runs the asr plan and waits for it."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from services.gateway import subtitles
from services.gateway.deps import AsyncRedisDep, RedisDep, SettingsDep, TenantDep
from services.gateway.submit import submit
from services.gateway.uploads import check_language, read_audio
from services.gateway.waiting import wait_done
from shared.jobs import AsrResult

router = APIRouter(tags=["openai"])

Format = Literal["json", "text", "verbose_json", "srt", "vtt"]


def _verbose(result: AsrResult) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "language": result.language,
        "duration": result.duration_s,
        "text": result.text,
        "segments": [
            {"id": i, "start": s.start, "end": s.end, "text": s.text, "avg_logprob": s.avg_logprob,
             "no_speech_prob": s.no_speech_prob, "low_confidence": s.low_confidence, "speaker": s.speaker,
             "channel": s.channel}
            for i, s in enumerate(result.segments)
        ],
        "low_confidence": result.low_confidence,
    }


def render(result: AsrResult, fmt: str) -> Response:
    if fmt == "text":
        return PlainTextResponse(result.text)
    segments = [s.wire() for s in result.segments]
    if fmt == "srt":
        return PlainTextResponse(subtitles.srt(segments), media_type="application/x-subrip")
    if fmt == "vtt":
        return PlainTextResponse(subtitles.vtt(segments), media_type="text/vtt")
    if fmt == "verbose_json":
        return JSONResponse(_verbose(result))
    return JSONResponse({"text": result.text})


@router.post("/v1/audio/transcriptions")
async def transcribe(
    conn: RedisDep,
    aconn: AsyncRedisDep,
    settings: SettingsDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form(description="Accepted for compatibility; the worker's model is used.")] = "whisper-1",
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[Format, Form()] = "json",
    temperature: Annotated[float | None, Form(ge=0, le=1)] = None,
) -> Response:
    lang = check_language(language)
    upload = await asyncio.to_thread(read_audio, file, settings, settings.max_turn_audio_s)
    options = {"language": lang, "initial_prompt": prompt, "model": model}
    job_id = await asyncio.to_thread(submit, conn, settings, kind="transcription", options=options, upload=upload,
                                    tenant=tenant)
    job = await wait_done(aconn, job_id, settings.transcription_wait_s, what="transcription")
    response = render(job.results.asr or AsrResult(), response_format)
    response.headers["X-Job-Id"] = job_id
    return response
