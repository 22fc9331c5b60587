"""POST /v1/chat: text in, an answer out (plan llm → tts, or llm alone when `speak` is false)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from services.gateway.deps import RedisDep, SettingsDep, TenantDep
from services.gateway.submit import links, submit
from services.gateway.uploads import check_language
from services.gateway.validate import StrictBody, check_session_id, check_text, check_voice

router = APIRouter(tags=["chat"])


class ChatRequest(StrictBody):
    text: str = Field(description="What the caller says (at most `chat_max_chars` characters).")
    session_id: str | None = Field(None, description="Keeps the conversation's history: [A-Za-z0-9_-]{1,64}.")
    speak: bool = Field(True, description="Also speak the answer (false: text only).")
    language: str | None = Field(None, description="ISO 639-1 code of the answer's language; default: guess.")
    voice: str | None = Field(None, description="TTS voice; default: the worker's.")
    stream: bool = Field(True, description="Speak sentence by sentence while the answer is being written.")


@router.post("/v1/chat", status_code=202)
def chat(body: ChatRequest, request: Request, conn: RedisDep, settings: SettingsDep, tenant: TenantDep) -> JSONResponse:
    """Answer a text; follow the job's events for the answer as it streams, its audio_url for the speech."""
    text = check_text(body.text, settings.chat_max_chars)
    options = {
        "language": check_language(body.language),
        "voice": check_voice(body.voice, settings),
        "session_id": check_session_id(body.session_id),
        "stream": body.stream,
    }
    kind = "chat" if body.speak else "chat_text"
    job_id = submit(conn, settings, kind=kind, options=options, text=text, tenant=tenant)
    return JSONResponse(links(request, settings, job_id, audio=body.speak), status_code=202)
