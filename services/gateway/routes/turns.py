"""POST /v1/turns: a caller's utterance in, a spoken answer out (plan asr → llm → tts)."""

from __future__ import annotations

import asyncio
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from services.gateway.deps import AsyncRedisDep, BlobsDep, RedisDep, SettingsDep, TenantDep
from services.gateway.errors import ApiError
from services.gateway.submit import links, submit
from services.gateway.uploads import check_language, read_audio
from services.gateway.validate import check_session_id, check_voice
from services.gateway.waiting import wait_done

router = APIRouter(tags=["turns"])

# Printable ASCII stays readable in the header; '%', control and non-ASCII characters are escaped.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_text(text: str) -> str:
    """Header-safe text (`urllib.parse.unquote` gives it back)."""
    return quote(text, safe=_HEADER_SAFE)


@router.post("/v1/turns", status_code=202,
             responses={200: {"content": {"audio/wav": {}}, "description": "With wait=true: the reply audio."}})
async def create_turn(
    request: Request,
    conn: RedisDep,
    aconn: AsyncRedisDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File(description="The caller's audio, any common container.")],
    language: Annotated[str | None, Form()] = None,
    voice: Annotated[str | None, Form()] = None,
    session_id: Annotated[str | None, Form()] = None,
    stream: Annotated[bool, Form(description="Speak sentence by sentence while the answer is written.")] = True,
    wait: Annotated[bool, Query(description="Answer with the reply audio (200) instead of links (202).")] = False,
) -> Response:
    options = {"language": check_language(language), "voice": check_voice(voice, settings),
               "session_id": check_session_id(session_id), "stream": stream}
    upload = await asyncio.to_thread(read_audio, file, settings, settings.max_turn_audio_s)
    job_id = await asyncio.to_thread(submit, conn, settings, kind="turn", options=options, upload=upload,
                                    tenant=tenant)
    if not wait:
        return JSONResponse(links(request, settings, job_id), status_code=202)
    job = await wait_done(aconn, job_id, settings.reply_wait_s, what="turn")
    tts, asr, reply = job.results.tts, job.results.asr, job.reply
    blob = await asyncio.to_thread(blobs.get, tts.blob_id) if tts is not None and tts.blob_id else None
    if blob is None:
        raise ApiError(410, "audio_expired", "the reply audio has expired")
    headers = {"X-Job-Id": job_id, "X-Transcript": header_text(asr.text if asr else ""),
               "X-Reply-Text": header_text(reply.text if reply else "")}
    return Response(blob[0], media_type=blob[1], headers=headers)
