"""Client events in both shapes; refusals as error codes."""

from __future__ import annotations

import base64
import json

import pytest

from services.gateway.calls import protocol
from services.gateway.calls.protocol import MAX_APPEND_BYTES, ProtocolError


def refused(raw: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        protocol.parse(raw)
    return info.value


def test_append_decodes_audio() -> None:
    event = protocol.parse(json.dumps({"type": "input_audio_buffer.append", "event_id": "e1",
                                       "audio": base64.b64encode(b"\x01\x02" * 80).decode()}))
    assert event.type == "input_audio_buffer.append" and event.event_id == "e1"
    assert event.audio == b"\x01\x02" * 80


def test_bad_inputs_are_named() -> None:
    assert refused("{not json").code == "invalid_json"
    assert refused("[1, 2]").code == "invalid_event"
    unknown = refused(json.dumps({"type": "response.dance", "event_id": "e9"}))
    assert unknown.code == "unknown_event" and unknown.event_id == "e9"
    assert refused(json.dumps({"type": "input_audio_buffer.append", "audio": "abc$"})).code == "invalid_base64"
    assert refused(json.dumps({"type": "input_audio_buffer.append", "audio": 12})).code == "invalid_event"
    big = base64.b64encode(b"\0" * (MAX_APPEND_BYTES + 3)).decode()
    assert refused(json.dumps({"type": "input_audio_buffer.append", "audio": big})).code == "audio_too_large"
    assert refused(json.dumps({"type": "conversation.item.truncate", "item_id": "i",
                               "audio_end_ms": -5})).code == "invalid_event"
    assert refused(json.dumps({"type": "session.update", "session": "x"})).code == "invalid_event"


def test_exactly_the_limit_is_accepted() -> None:
    audio = base64.b64encode(b"\0" * MAX_APPEND_BYTES).decode()
    assert len(protocol.parse(json.dumps({"type": "input_audio_buffer.append", "audio": audio})).audio) == \
        MAX_APPEND_BYTES


def test_message_items() -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}
    assert protocol.message_text(item) == ("user", "Hello there")
    with pytest.raises(ProtocolError):
        protocol.message_text({"type": "function_call", "name": "x"})
    with pytest.raises(ProtocolError):
        protocol.message_text({"type": "message", "role": "user", "content": []})


def test_server_events_have_ids_and_ga_names() -> None:
    error = protocol.error("invalid_json", "bad", event_id="e2")
    assert error["type"] == "error" and error["event_id"].startswith("event_")
    assert error["error"] == {"type": "invalid_request_error", "code": "invalid_json", "message": "bad",
                              "param": None, "event_id": "e2"}
    done = protocol.response("resp_1", "cancelled", [], reason="turn_detected")
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
