"""The OpenAI Realtime protocol's wire shapes: client events in (GA or beta), server events out (GA names).

Nothing here holds call state: `parse` checks one client message and returns a `ClientEvent`;
the builders return plain dicts ready for `json.dumps`.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

MAX_APPEND_BYTES = 15 * 1024 * 1024  # the protocol's limit per input_audio_buffer.append (decoded audio)
CLIENT_EVENTS = frozenset({
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
    "conversation.item.create", "conversation.item.truncate", "response.create", "response.cancel",
})


class ProtocolError(ValueError):
    """A client event we refuse; becomes an `error` event (the call goes on)."""

    def __init__(self, code: str, message: str, event_id: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.event_id, self.param = code, message, event_id, param


@dataclass
class ClientEvent:
    type: str
    event_id: str | None
    data: dict[str, Any] = field(default_factory=dict)
    audio: bytes = b""  # input_audio_buffer.append, decoded


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def parse(raw: str | bytes) -> ClientEvent:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("invalid_json", f"the message is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("invalid_event", "an event is a JSON object with a string 'type'")
    type_, event_id = data["type"], data.get("event_id")
    event_id = event_id if isinstance(event_id, str) else None
    if type_ not in CLIENT_EVENTS:
        raise ProtocolError("unknown_event", f"unknown event type {type_!r}", event_id, "type")
    event = ClientEvent(type_, event_id, data)
    if type_ == "input_audio_buffer.append":
        event.audio = _audio(data, event_id)
    elif type_ == "conversation.item.truncate":
        _truncate_fields(data, event_id)
    elif type_ == "session.update" and not isinstance(data.get("session"), dict):
        raise ProtocolError("invalid_event", "session.update needs a 'session' object", event_id, "session")
    elif type_ == "conversation.item.create" and not isinstance(data.get("item"), dict):
        raise ProtocolError("invalid_event", "conversation.item.create needs an 'item' object", event_id, "item")
    return event


def _audio(data: dict[str, Any], event_id: str | None) -> bytes:
    audio = data.get("audio")
    if not isinstance(audio, str):
        raise ProtocolError("invalid_event", "input_audio_buffer.append needs base64 'audio'", event_id, "audio")
    # Checked before decoding: a 15 MiB limit must not cost decoding a far larger string first.
    if len(audio) > (MAX_APPEND_BYTES * 4) // 3 + 4:
        raise ProtocolError("audio_too_large", f"one append may carry at most {MAX_APPEND_BYTES} bytes of audio",
                            event_id, "audio")
    try:
        decoded = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("invalid_base64", f"'audio' is not valid base64: {exc}", event_id, "audio") from exc
    if len(decoded) > MAX_APPEND_BYTES:
        raise ProtocolError("audio_too_large", f"one append may carry at most {MAX_APPEND_BYTES} bytes of audio",
                            event_id, "audio")
    return decoded


def _truncate_fields(data: dict[str, Any], event_id: str | None) -> None:
    if not isinstance(data.get("item_id"), str):
        raise ProtocolError("invalid_event", "conversation.item.truncate needs 'item_id'", event_id, "item_id")
    end = data.get("audio_end_ms")
    if not isinstance(end, int) or isinstance(end, bool) or end < 0:
        raise ProtocolError("invalid_event", "'audio_end_ms' must be a non-negative integer", event_id,
                            "audio_end_ms")


def message_text(item: dict[str, Any]) -> tuple[str, str]:
    """(role, text) of a conversation.item.create message item."""
    if item.get("type", "message") != "message":
        raise ProtocolError("unsupported_item", f"item type {item.get('type')!r} is not supported: send a message",
                            None, "item.type")
    role = item.get("role", "user")
    if role not in ("user", "assistant", "system"):
        raise ProtocolError("invalid_event", f"unknown role {role!r}", None, "item.role")
    parts = item.get("content")
    if not isinstance(parts, list):
        raise ProtocolError("invalid_event", "a message item needs a 'content' list", None, "item.content")
    texts = [p.get("text") or p.get("transcript") for p in parts if isinstance(p, dict)]
    text = " ".join(t for t in texts if isinstance(t, str) and t.strip()).strip()
    if not text:
        raise ProtocolError("invalid_event", "the message has no text (input_text parts)", None, "item.content")
    return role, text


# Server events. Every one carries a fresh event_id, as the protocol's do.

def event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "event_id": new_id("event"), **fields}


def error(code: str, message: str, event_id: str | None = None, param: str | None = None,
          type_: str = "invalid_request_error") -> dict[str, Any]:
    return event("error", error={"type": type_, "code": code, "message": message, "param": param,
                                 "event_id": event_id})


def message_item(item_id: str, role: str, text: str | None, *, audio: bool, status: str = "completed"
                 ) -> dict[str, Any]:
    if role == "user":
        content = [{"type": "input_audio", "transcript": text}] if audio else [{"type": "input_text", "text": text}]
    else:
        content = [{"type": "output_audio", "transcript": text}] if audio else [{"type": "output_text", "text": text}]
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": status, "role": role,
            "content": content}


def response(response_id: str, status: str, items: list[dict[str, Any]], *, reason: str | None = None,
             usage: dict[str, Any] | None = None) -> dict[str, Any]:
    details = {"type": status, "reason": reason} if reason else None
    return {"id": response_id, "object": "realtime.response", "status": status, "status_details": details,
            "output": items, "output_modalities": ["audio"], "usage": usage}
