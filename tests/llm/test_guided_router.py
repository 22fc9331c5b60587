"""The guided decision with the real local model: the caller who asks for a person reaches one.

Phrases the router was not tuned on (the tuning set is in the commit that added the transfer-first
question); the right answer is plain to any person reading them.
"""

from __future__ import annotations

import pytest

from services.llm import actions, guided
from services.llm.engines.openai_compat import OpenAICompatEngine
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.llm.helpers import API_KEY, settings_for

ASKS_FOR_A_PERSON_ABOUT_A_FAULT = [
    "The kettle I bought is faulty, I'd like to talk to a real person.",
    "Can you connect me with someone from your team? My chair is defective.",
    "I want to speak to an operator about my broken phone.",
    "这个吹风机坏了，我要转人工。",
]
REPORTS_A_FAULT = [
    "My headphones stopped working after two days.",
    "The heater doesn't work, please have someone call me back tomorrow.",
]
ASKS_NOTHING = ["Are you a human or a robot?", "Is your customer agent program open to new members?"]


def decide(base_url: str, text: str) -> str | None:
    engine = OpenAICompatEngine(settings_for(base_url, "redis://127.0.0.1:1", llm_timeout_s=120.0))
    return guided.choose(engine, text, [], guided.candidates(text, []), [])


@pytest.mark.parametrize("text", ASKS_FOR_A_PERSON_ABOUT_A_FAULT)
def test_asking_for_a_person_transfers_even_with_a_fault(llm_server: str, text: str) -> None:
    assert guided.candidates(text, []) == [actions.TRANSFER, actions.TICKET]  # both are on offer
    assert decide(llm_server, text) == actions.TRANSFER


@pytest.mark.parametrize("text", REPORTS_A_FAULT)
def test_a_fault_alone_opens_a_ticket(llm_server: str, text: str) -> None:
    assert decide(llm_server, text) == actions.TICKET


@pytest.mark.parametrize("text", ASKS_NOTHING)
def test_words_about_people_that_ask_for_nothing_are_no_action(llm_server: str, text: str) -> None:
    assert guided.candidates(text, []) == [actions.TRANSFER]
    assert decide(llm_server, text) is None


def test_the_transfer_is_asked_alone_first_then_the_rest() -> None:
    answers = [Reply('{"action": "none"}'), Reply('{"action": "create_ticket"}')]
    with FakeOpenAI(script=answers, api_key=API_KEY) as fake:
        chosen = decide(fake.base_url, "My lamp is broken, can I talk to a person?")
        offered = [r.body["response_format"]["json_schema"]["schema"]["properties"]["action"]["enum"]
                   for r in fake.chat_requests]
    assert offered == [[actions.TRANSFER, "none"], [actions.TICKET, "none"]]
    assert chosen == actions.TICKET
