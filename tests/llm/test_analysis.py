"""The llm stage in analysis mode: strict JSON per recorded call, retried with the error fed back, chunked when long."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from services.llm import analysis
from services.llm.analysis import CallAnalysis
from shared import jobs
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.llm.helpers import API_KEY, run_llm, settings_for

CALL = [  # (start, speaker, text): a short support call on two channels
    (0.0, "agent", "Thank you for calling Northwind Internet, this is Dana. How can I help you today?"),
    (4.0, "customer", "Hi, my internet has been down since yesterday evening and I work from home."),
    (9.0, "agent", "I'm sorry to hear that. Can I have your account number and the phone number on the account?"),
    (14.0, "customer", "Sure, the account number is 4417 2290 and my phone is 555 0142."),
    (19.0, "agent", "Thanks. I see an outage in your area. A technician is fixing it and service should be back "
                    "by six pm today. I will also credit one day to your bill."),
    (27.0, "customer", "Okay, that's great, thank you so much for your help."),
    (30.0, "agent", "You're welcome. Have a nice day."),
]

VALID = {
    "summary": "The customer's internet was down; the agent found an outage and promised a fix and a credit.",
    "intent": "internet outage",
    "resolution": "resolved",
    "sentiment": {"agent": "positive", "customer": "positive"},
    "action_items": ["credit one day to the bill"],
    "pii_found": ["account_number", "phone"],
}


def asr_result(lines: list[tuple[float, str, str]]) -> dict[str, Any]:
    channel = {"agent": 0, "customer": 1}
    segments = [{"start": start, "end": start + 3.5, "text": text, "speaker": speaker,
                 "channel": channel.get(speaker, 0), "low_confidence": False} for start, speaker, text in lines]
    return {"text": " ".join(t for _, _, t in lines), "language": "en", "duration_s": lines[-1][0] + 4,
            "channels": 2, "speakers": ["agent", "customer"], "segments": segments, "low_confidence": False}


def call_job(conn: redis.Redis, asr: dict[str, Any]) -> str:
    job_id = jobs.create(conn, kind="call", priority="batch", plan=["asr", "llm"],
                         inputs={"blob_id": "x", "duration_s": asr["duration_s"], "filename": "call.wav"},
                         options={"language": None, "analysis": True, "batch_id": "b1"}, ttl_s=3600)
    jobs.put_result(conn, job_id, "asr", asr)
    return job_id


def user_messages(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def test_invalid_answer_is_retried_with_the_error(conn: redis.Redis, redis_url: str) -> None:
    bad = {**VALID, "resolution": "maybe"}
    script = [Reply("Here is the analysis: {\"summary\": \"cut short"), Reply(json.dumps(bad)),
              Reply("```json\n" + json.dumps(VALID) + "\n```")]
    with FakeOpenAI(script=script, api_key=API_KEY) as fake:
        job_id = call_job(conn, asr_result(CALL))
        record = run_llm(conn, settings_for(fake.base_url, redis_url), job_id)
        requests = fake.chat_requests

    assert record["status"] == "done", record["error"]
    result = record["results"]["llm"]
    assert result["attempts"] == 3 == len(requests)
    assert result["chunks"] == 1
    assert CallAnalysis.model_validate(result["analysis"]).model_dump() == VALID
    assert result["prompt_tokens"] > 100 and result["completion_tokens"] > 10
    assert record["cost"]["prompt_tokens"] == result["prompt_tokens"]
    first, second, third = (r.body for r in requests)
    # Speaker turns from the segments, and the schema (sentiment keys spelled out) as the grammar.
    assert "agent: Thank you for calling Northwind" in user_messages(first)[0]
    assert "\ncustomer: Hi, my internet has been down" in user_messages(first)[0]
    schema = first["response_format"]["schema"]
    assert first["response_format"]["type"] == "json_object"
    assert schema["properties"]["sentiment"]["required"] == ["agent", "customer"]
    assert not first.get("stream")
    # Each retry carries the previous answer and what was wrong with it.
    assert second["messages"][-2] == {"role": "assistant", "content": "Here is the analysis: {\"summary\": \"cut short"}
    assert "not valid JSON" in user_messages(second)[-1]
    assert "resolution: Input should be 'resolved', 'unresolved' or 'escalated'" in user_messages(third)[-1]
    assert len(third["messages"]) == len(first["messages"]) + 4


def test_always_invalid_fails_with_the_raw_output(conn: redis.Redis, redis_url: str) -> None:
    wrong_speakers = {**VALID, "sentiment": {"caller": "negative"}}
    with FakeOpenAI(default=Reply(json.dumps(wrong_speakers)), api_key=API_KEY) as fake:
        job_id = call_job(conn, asr_result(CALL))
        record = run_llm(conn, settings_for(fake.base_url, redis_url, llm_analysis_attempts=2), job_id)
        requests = fake.chat_requests

    assert len(requests) == 2
    assert record["status"] == "failed"
    error = record["error"]
    assert error["reason"] == "analysis_invalid" and error["stage"] == "llm"
    assert "sentiment must have exactly the keys ['agent', 'customer']" in error["message"]
    assert '"caller": "negative"' in error["message"]  # the raw answer is kept
    assert "llm" not in record["results"]


def test_long_transcript_is_analysed_in_chunks_then_merged(conn: redis.Redis, redis_url: str) -> None:
    long_call = [(i * 35.0 + start, speaker, text) for i in range(6) for start, speaker, text in CALL]
    parts = [{**VALID, "pii_found": [kind]} for kind in ("phone", "account_number", "name")]
    merged = {**VALID, "summary": "Merged.", "pii_found": ["phone"]}
    script = [Reply(json.dumps(p)) for p in parts] + [Reply(json.dumps(merged))]
    with FakeOpenAI(script=script, api_key=API_KEY) as fake:
        job_id = call_job(conn, asr_result(long_call))
        settings = settings_for(fake.base_url, redis_url, llm_analysis_max_chars=1300)
        record = run_llm(conn, settings, job_id)
        requests = fake.chat_requests

    assert record["status"] == "done", record["error"]
    result = record["results"]["llm"]
    assert result["chunks"] == 3 and result["attempts"] == 4 == len(requests)
    assert result["analysis"]["summary"] == "Merged."
    assert result["analysis"]["pii_found"] == ["account_number", "name", "phone"]  # union over the parts
    prompts = [user_messages(r.body)[0] for r in requests]
    for n, prompt in enumerate(prompts[:3], 1):
        assert f"part {n} of 3" in prompt
        transcript = prompt.split("Transcript:\n", 1)[1]
        assert len(transcript) <= 1300
        assert all(line.startswith(("agent: ", "customer: ")) for line in transcript.splitlines())
    # No words lost or doubled between the chunks.
    said = "\n".join(p.split("Transcript:\n", 1)[1] for p in prompts[:3])
    assert said.count("Northwind Internet") == 6 and said.count("555 0142") == 6
    assert "consecutive parts of one call" in prompts[3]
    assert all(json.dumps(p["pii_found"]) in prompts[3] for p in parts)


def test_split_cuts_overlong_turns_and_cjk_between_words() -> None:
    line = "customer: " + " ".join(f"word{i}" for i in range(400))
    chunks = analysis.split([line, "agent: ok"], 500)
    assert all(analysis.weight(c) <= 500 for c in chunks)
    lines = "\n".join(chunks).splitlines()
    assert len(chunks) > 3 and lines[-1] == "agent: ok"
    assert all(x.startswith("customer: ") for x in lines[:-1])
    assert " ".join(x.removeprefix("customer: ") for x in lines[:-1]).split() == line.split()[1:]
    cjk = "客户：" + "我的网络从昨天晚上开始就断了" * 60
    pieces = analysis.split([cjk], 300)
    assert all(analysis.weight(p) <= 300 for p in pieces) and "".join(pieces) == cjk


def test_empty_transcript_fails_clearly(conn: redis.Redis, redis_url: str) -> None:
    with FakeOpenAI(api_key=API_KEY) as fake:
        job_id = call_job(conn, {**asr_result(CALL), "text": "", "segments": []})
        record = run_llm(conn, settings_for(fake.base_url, redis_url), job_id)
        assert fake.chat_requests == []
    assert record["status"] == "failed" and record["error"]["reason"] == "empty_transcript"


def test_real_model_analysis_validates(conn: redis.Redis, redis_url: str, llm_server: str) -> None:
    # json_object mode (no schema grammar) also validated at the first attempt when measured: see the report.
    settings = settings_for(llm_server, redis_url, llm_timeout_s=60.0)
    job_id = call_job(conn, asr_result(CALL))
    start = time.monotonic()
    record = run_llm(conn, settings, job_id)
    elapsed = time.monotonic() - start

    assert record["status"] == "done", record["error"]
    result = record["results"]["llm"]
    found = CallAnalysis.model_validate(result["analysis"])
    print(f"\n{result['attempts']} attempt(s), {elapsed:.1f} s, {result['prompt_tokens']}+"
          f"{result['completion_tokens']} tokens: {found.model_dump_json()}")
    assert set(found.sentiment) == {"agent", "customer"}
    assert result["attempts"] <= settings.llm_analysis_attempts
    assert any(word in (found.summary + found.intent).lower() for word in ("internet", "outage", "connection"))
    assert found.resolution in ("resolved", "escalated")
    assert found.sentiment["customer"] != "negative"  # "that's great, thank you so much"
