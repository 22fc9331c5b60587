"""Reading tool calls out of replies, as the local model writes them and as servers parse them, and the
checks a call passes before it runs."""

from __future__ import annotations

import pytest

from services.llm import actions
from services.llm.tool_calls import Call, Hold, check, from_server, from_text, opens_call

ORDER = {"type": "object", "properties": {"order_id": {"type": "string", "pattern": "^[0-9]{5}$"}},
         "required": ["order_id"]}


@pytest.mark.parametrize("text", [
    '{{"name": "transfer_to_human", "arguments": {"reason": "caller asked for a person"}}}',  # doubled braces
    '<tools>\n{"name": "transfer_to_human", "arguments": {"reason": "caller asked for a person"}}\n</tools>',
    '<tool_call>{"name": "transfer_to_human", "arguments": {"reason": "caller asked for a person"}}</tool_call>',
    '```json\n{\n  "name": "transfer_to_human",\n  "arguments": {"reason": "caller asked for a person"}\n}\n```',
    '{"function": {"name": "transfer_to_human", "arguments": "{\\"reason\\": \\"caller asked for a person\\"}"}}',
])
def test_a_call_written_as_text_is_read_whatever_its_wrapping(text: str) -> None:
    call = from_text(text)
    assert call is not None
    assert call.name == "transfer_to_human"
    assert call.arguments == {"reason": "caller asked for a person"}


def test_a_call_cut_off_at_the_token_limit_is_still_read() -> None:
    call = from_text('```json\n{"name": "create_ticket", "arguments": {"subject": "Broken", "summary": "It broke"')
    assert call is not None and call.arguments == {"subject": "Broken", "summary": "It broke"}


@pytest.mark.parametrize("text", ["Hello! How can I help?", "We open at 9.", "{not json at all", "", "{}"])
def test_speech_and_junk_are_not_calls(text: str) -> None:
    assert from_text(text) is None


def test_speech_is_released_at_its_first_word_and_a_call_is_held() -> None:
    hold = Hold()
    assert [hold.feed(d) for d in ["", " ", "We", " open", " at nine."]] == ["", "", " We", " open", " at nine."]
    call = Hold()
    assert [call.feed(d) for d in ["<", "tool", "_call>", '{"name"']] == ["", "", "", ""]
    assert call.decided is True and call.flush() == ""
    assert opens_call("``") is None and opens_call("`a") is False and opens_call("<b>") is False


def test_server_parsed_calls_are_read() -> None:
    call = from_server([{"name": "lookup_order", "arguments": '{"order_id": "12345"}'}])
    assert call is not None and call.arguments == {"order_id": "12345"}
    assert from_server([]) is None


def test_a_figure_the_caller_never_said_is_refused() -> None:
    made_up = check(Call("lookup_order", {"order_id": "12345"}), ORDER, "Where is my order?")
    assert not made_up.ok and "12345 was not said by the caller" in made_up.errors[0]
    said = check(Call("lookup_order", {"order_id": "12345"}), ORDER, "Where is order one two three four five? 12345")
    assert said.ok


def test_schema_errors_name_the_argument() -> None:
    result = check(Call("lookup_order", {"order_id": "12"}), ORDER, "my order is 12")
    assert not result.ok and result.errors[0].startswith("$.order_id:") and "does not match" in result.errors[0]
    missing = check(Call("lookup_order", {}), ORDER, "")
    assert "'order_id' is a required property" in missing.errors[0]
    assert not check(Call("lookup_order", "12345"), ORDER, "12345").ok  # not an object


def test_a_ticket_may_summarise_in_the_models_words_but_not_invent_a_contact() -> None:
    schema = actions.BUILTIN[actions.TICKET]["parameters"]
    fields = actions.FIGURE_FIELDS[actions.TICKET]
    ok = check(Call("create_ticket", {"subject": "Blender broken", "summary": "Arrived broken on day 2",
                                      "contact": "anna@example.com"}), schema, "my email is anna@example.com", fields)
    assert ok.ok
    bad = check(Call("create_ticket", {"subject": "x", "summary": "y", "contact": "555 0100"}), schema,
                "call me back", fields)
    assert not bad.ok and "contact" in bad.errors[0]
    assert not check(Call("create_ticket", {"subject": "x", "summary": "y", "priority": "asap"}), schema, "",
                     fields).ok


def test_a_broken_schema_refuses_the_call_instead_of_failing_the_turn() -> None:
    schema = {"type": "object", "properties": {"order_id": {"$ref": "#/$defs/missing"}}}
    result = check(Call("lookup_order", {"order_id": "12345"}), schema, "order 12345")
    assert not result.ok and "broken reference" in result.errors[0]


def test_formats_in_a_schema_are_checked() -> None:
    schema = {"type": "object", "properties": {"contact": {"type": "string", "format": "email"}}}
    assert not check(Call("notify", {"contact": "not an email"}), schema, "").ok
    assert check(Call("notify", {"contact": "anna@example.com"}), schema, "anna@example.com").ok
