"""POST /v1/turns: a caller's utterance in, a spoken answer out (plan asr → llm → tts)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from services.gateway.deps import RedisDep, SettingsDep
from services.gateway.submit import links, submit
from services.gateway.uploads import check_language, read_audio

router = APIRouter(tags=["turns"])


@router.post("/v1/turns", status_code=202)
def create_turn(
    request: Request,
    conn: RedisDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="The caller's audio, any common container.")],
    language: Annotated[str | None, Form()] = None,
    voice: Annotated[str | None, Form()] = None,
    session_id: Annotated[str | None, Form()] = None,
) -> JSONResponse:
    lang = check_language(language)
    upload = read_audio(file, settings, settings.max_turn_audio_s)
    options = {"language": lang, "voice": voice, "session_id": session_id}
    job_id = submit(conn, settings, kind="turn", options=options, upload=upload)
    return JSONResponse(links(request, settings, job_id), status_code=202)
