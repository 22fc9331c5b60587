"""Checking request fields (text, session id, voice) before anything is stored or enqueued."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from services.gateway.config import GatewaySettings
from services.gateway.errors import ApiError

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# OpenAI's voice names: clients written for OpenAI send them; they mean "the default voice" here.
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin",
     "cedar"}
)
EDGE_VOICE = re.compile(r"^[a-z]{2,}-[A-Z]{2,}-.+Neural$")


class StrictBody(BaseModel):
    """A JSON body of voicequeue's own routes: an unknown field is a 422 naming it, not silently dropped. A
    "history" sent to /v1/chat (which keeps history by `session_id`) was ignored, and the reply came from the
    answer cache as if the caller had said nothing before. OpenAI-compatible bodies stay lenient: its SDKs
    send fields of their own."""

    model_config = ConfigDict(extra="forbid")


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_text(text: str, limit: int, field: str = "text") -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON may carry lone surrogates ("\ud800"), which are not text
        raise ApiError(400, "invalid_text", f"'{field}' is not valid Unicode text: {exc.reason}") from exc
    if CONTROL.search(text):
        raise ApiError(400, "invalid_text", f"'{field}' contains control characters (NUL and the like)")
    if not text.strip():
        raise ApiError(400, "empty_text", f"'{field}' is empty: there is nothing to answer or speak")
    if len(text) > limit:
        raise ApiError(400, "text_too_long", f"'{field}' has {len(text)} characters; the limit is {limit}")
    return text


def check_session_id(session_id: str | None) -> str | None:
    if session_id is None:
        return None
    if not SESSION_ID.match(session_id):
        raise ApiError(400, "invalid_session_id",
                       "session_id must be 1-64 characters of letters, digits, '_' or '-'")
    return session_id


@functools.cache
def espeak_voices() -> frozenset[str]:
    """espeak-ng voice identifiers (`cmn`, `en-us`, `de`…): file names under its bundled data's lang/."""
    import espeakng_loader

    return frozenset(p.name.lower() for p in (Path(espeakng_loader.get_data_path()) / "lang").rglob("*")
                     if p.is_file())


def check_voice(voice: str | None, settings: GatewaySettings) -> str | None:
    """The voice to put in the job's options (None: the worker's default), or 400 for a voice nobody has."""
    if voice is None or not voice.strip() or voice.lower() in OPENAI_VOICES:
        return None
    if voice in settings.gateway_voices or EDGE_VOICE.match(voice) or voice.lower() in espeak_voices():
        return voice
    known = ", ".join([*settings.gateway_voices, "xx-YY-NameNeural (edge)", "espeak-ng voices such as cmn"])
    raise ApiError(400, "unknown_voice", f"unknown voice {voice!r}: use one of {known}")


EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def check_event_id(event_id: str | None) -> str:
    """A Redis stream id as Last-Event-ID / `after` (default: from the start); 400 for anything else."""
    if event_id is None or event_id == "":
        return "0-0"
    if not EVENT_ID.match(event_id):
        raise ApiError(400, "invalid_event_id",
                       f"Last-Event-ID must be an event id like '1700000000000-0' from this stream, not {event_id!r}")
    return event_id
