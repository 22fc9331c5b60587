"""What a live call adds to its reply jobs: the session's instructions on top of the system prompt, and its own
history length (20 exchanges by default, more than a session keeps). Checked on the request the llm stage
sends to a real local OpenAI-protocol server."""

from __future__ import annotations

import uuid
from typing import Any

import redis

from services.llm.config import SYSTEM_PROMPT
from shared import jobs
from tests.fakes.openai_server import FakeOpenAI
from tests.llm.helpers import run_llm, settings_for

INSTRUCTIONS = "You are Ada, the voice of Example Parcels. Always mention the word ZEBRA."


def call_reply(conn: redis.Redis, text: str, **options: Any) -> str:
    return jobs.create(conn, kind="chat", priority="live", inputs={"text": text},
                       options={"language": "en", "stream": True, "call_id": "call_x", **options}, ttl_s=3600)


def test_instructions_follow_the_system_prompt(conn: redis.Redis, redis_url: str) -> None:
    with FakeOpenAI() as fake:
        run_llm(conn, settings_for(fake.base_url, redis_url), call_reply(conn, "Hello?", instructions=INSTRUCTIONS))
        run_llm(conn, settings_for(fake.base_url, redis_url), call_reply(conn, "Hello?"))
        with_, without = (r.body["messages"][0]["content"] for r in fake.chat_requests)
    assert with_.startswith(SYSTEM_PROMPT) and INSTRUCTIONS in with_
    assert with_.index(INSTRUCTIONS) > len(SYSTEM_PROMPT)  # after ours: the warmed prefix stays shared
    assert "English" in with_  # the caller's language still applies
    assert INSTRUCTIONS not in without and without.startswith(SYSTEM_PROMPT)


def test_instructions_are_part_of_the_answer_cache_key(conn: redis.Redis, redis_url: str) -> None:
    """A context-free question asked with other instructions must not get the answer cached without them."""
    question = f"What happens on day {uuid.uuid4().hex[:6]}?"  # not cached by another test
    with FakeOpenAI() as fake:
        settings = settings_for(fake.base_url, redis_url)
        plain = run_llm(conn, settings, call_reply(conn, question))
        again = run_llm(conn, settings, call_reply(conn, question))
        styled = run_llm(conn, settings, call_reply(conn, question, instructions=INSTRUCTIONS))
        asked = len(fake.chat_requests)
    assert plain["results"]["llm"]["cache"] == "miss" and again["results"]["llm"]["cache"] == "hit"
    assert styled["results"]["llm"]["cache"] == "miss" and asked == 2


def test_a_call_keeps_its_own_history_length(conn: redis.Redis, redis_url: str) -> None:
    history: list[dict[str, str]] = []
    for i in range(25):
        history += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    with FakeOpenAI() as fake:
        settings = settings_for(fake.base_url, redis_url, session_max_turns=10)
        run_llm(conn, settings, call_reply(conn, "and now?", history=history, history_turns=20))
        run_llm(conn, settings, call_reply(conn, "and now?", history=history))
        call, default = (r.body["messages"] for r in fake.chat_requests)
    assert len(call) == 1 + 40 + 1 and call[1] == {"role": "user", "content": "question 5"}
    assert call[-2] == {"role": "assistant", "content": "answer 24"}
    assert len(default) == 1 + 20 + 1  # without it, as much as a session keeps
