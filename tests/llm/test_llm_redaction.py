"""PII never reaches an outside LLM: every message of a reply and of a call analysis is redacted on the way out."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from services.llm.engines.base import Message
from services.llm.engines.openai_compat import PLACEHOLDER_NOTE, OpenAICompatEngine, redacts
from shared import jobs
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.llm.helpers import API_KEY, run_llm, sample, settings_for
from tests.llm.test_analysis import CALL, VALID, asr_result, call_job

PII = ("13812345678", "138 1234 5678", "bob@example.com", "4111 1111 1111 1111", "11010519491231002X")
USER = "我的手机号是13812345678，邮箱 bob@example.com. Card 4111 1111 1111 1111, what is case 7720240615123 about?"
HISTORY = [{"role": "user", "content": "My ID is 11010519491231002X"},
           {"role": "assistant", "content": "Thanks, I will call you back on 138 1234 5678."}]


def chat_job(conn: redis.Redis) -> str:
    return jobs.create(conn, kind="chat_text", priority="live", inputs={"text": USER},
                       options={"language": None, "history": HISTORY}, ttl_s=3600)


def sent_text(fake: FakeOpenAI) -> str:
    return json.dumps([r.body["messages"] for r in fake.chat_requests], ensure_ascii=False)


def test_outside_llm_never_receives_pii(conn: redis.Redis, redis_url: str) -> None:
    before = {kind: sample("voicequeue_pii_redactions_total", kind=kind, where="llm")
              for kind in ("phone", "email", "card", "id")}
    with FakeOpenAI(default=Reply("I have noted your details."), api_key=API_KEY) as fake:
        settings = settings_for(fake.base_url, redis_url, llm_redact_pii="always", llm_answer_cache=False)
        record = run_llm(conn, settings, chat_job(conn))
        sent = sent_text(fake)
        [request] = fake.chat_requests
    assert record["status"] == "done", record["error"]
    for value in PII:
        assert value not in sent
    messages = request.body["messages"]
    assert messages[0] == {"role": "system", "content": f"{settings.llm_system_prompt} {PLACEHOLDER_NOTE}"}
    assert messages[1:3] == [{"role": "user", "content": "My ID is [ID]"},
                             {"role": "assistant", "content": "Thanks, I will call you back on [PHONE]."}]
    expected = "我的手机号是[PHONE]，邮箱 [EMAIL]. Card [CARD], what is case 7720240615123 about?"  # case no. kept
    assert messages[3] == {"role": "user", "content": expected}
    after = {kind: sample("voicequeue_pii_redactions_total", kind=kind, where="llm") - before[kind]
             for kind in before}
    assert after == {"phone": 2, "email": 1, "card": 1, "id": 1}
    # What the caller sent is kept as sent in our own record; only the request leaving was redacted.
    assert record["inputs"]["text"] == USER


@pytest.mark.parametrize("policy", ["auto", "never"])
def test_local_llm_gets_the_text_as_spoken(conn: redis.Redis, redis_url: str, policy: str) -> None:
    """The fake listens on loopback, like the bundled llama.cpp server: `auto` sends the text unchanged."""
    with FakeOpenAI(default=Reply("Noted."), api_key=API_KEY) as fake:
        settings = settings_for(fake.base_url, redis_url, llm_redact_pii=policy, llm_answer_cache=False)
        record = run_llm(conn, settings, chat_job(conn))
        [request] = fake.chat_requests
    assert record["status"] == "done", record["error"]
    assert request.body["messages"][-1]["content"] == USER
    assert PLACEHOLDER_NOTE not in request.body["messages"][0]["content"]
    assert request.body["messages"][1]["content"] == HISTORY[0]["content"]


def test_auto_redacts_for_outside_hosts_only() -> None:
    def policy(url: str, mode: str = "auto") -> bool:
        return redacts(settings_for(url, "redis://127.0.0.1:1/0", llm_redact_pii=mode))

    assert policy("https://api.openai.com/v1") and policy("https://dashscope.aliyuncs.com/compatible-mode/v1")
    assert not policy("http://127.0.0.1:8080/v1") and not policy("http://llm-server:8080/v1")
    assert policy("http://127.0.0.1:8080/v1", "always") and not policy("https://api.openai.com/v1", "never")


def test_only_the_configured_kinds(redis_url: str) -> None:
    engine = OpenAICompatEngine(settings_for("https://api.example.com/v1", redis_url, llm_redact_kinds=["email"]))
    out = engine.outgoing([{"role": "user", "content": "13812345678 bob@example.com"}])
    assert out == [{"role": "user", "content": "13812345678 [EMAIL]"}]
    clean: list[Message] = [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Where is order 7720240615?"}]
    assert engine.outgoing(clean) == clean  # nothing replaced: no placeholder note either


def test_call_analysis_is_redacted(conn: redis.Redis, redis_url: str) -> None:
    call = [*CALL[:3], (14.0, "customer", "Sure, my mobile is +86 139 1234 5678 and my email is ann@example.org."),
            *CALL[4:]]
    with FakeOpenAI(default=Reply(json.dumps(VALID)), api_key=API_KEY) as fake:
        settings = settings_for(fake.base_url, redis_url, llm_redact_pii="always")
        record = run_llm(conn, settings, call_job(conn, asr_result(call)))
        sent = sent_text(fake)
    assert record["status"] == "done", record["error"]
    assert "139 1234 5678" not in sent and "ann@example.org" not in sent
    assert "customer: Sure, my mobile is [PHONE] and my email is [EMAIL]." in json.loads(sent)[0][1]["content"]
    stored: Any = record["results"]["llm"]["analysis"]
    assert stored["pii_found"] == VALID["pii_found"]
