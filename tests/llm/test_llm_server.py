"""The llm stage against the real local llama.cpp server and the bundled Qwen2.5-Coder-1.5B-Instruct model."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from services.llm import tasks
from shared import events, jobs, sessions, stage
from tests.llm.helpers import resources, settings_for


def ask(conn: redis.Redis, base_url: str, redis_url: str, text: str, **options: Any) -> dict[str, Any]:
    settings = settings_for(base_url, redis_url, llm_temperature=0.0, llm_timeout_s=60)
    job_id = jobs.create(conn, kind="chat_text", priority="live", inputs={"text": text},
                         options={"language": None, **options}, ttl_s=3600)
    stage.run("llm", job_id, conn, settings, tasks.work, resources(settings))
    record = jobs.load(conn, job_id)
    assert record is not None and record["status"] == "done", record and record["error"]
    result: dict[str, Any] = record["results"]["llm"]
    streamed = "".join(d["text"] for _, kind, d in events.read(conn, job_id) if kind == "llm.delta")
    assert streamed == result["text"]
    run_s = record["stages"]["llm"]["run_s"]
    rate = (result["completion_tokens"] - 1) / max(run_s - result["ttft_s"], 1e-6)
    print(f"\n{text!r} -> {result['text']!r}\n  ttft {result['ttft_s']:.2f} s, run {run_s:.2f} s, "
          f"{result['prompt_tokens']} prompt / {result['completion_tokens']} completion tokens "
          f"(estimated: {result['usage_estimated']}), {rate:.1f} tokens/s after the first")
    return result


def test_english_question(conn: redis.Redis, llm_server: str, redis_url: str) -> None:
    result = ask(conn, llm_server, redis_url, "What is the capital of France? Answer in one word.", language="en")
    assert "paris" in result["text"].lower()
    assert 0 < result["ttft_s"] < 10
    assert 0 < result["completion_tokens"] < 40
    assert result["prompt_tokens"] > 20
    assert result["finish_reason"] == "stop"
    assert result["model"]


def test_chinese_question(conn: redis.Redis, llm_server: str, redis_url: str) -> None:
    result = ask(conn, llm_server, redis_url, "中国的首都是哪个城市？请用一句话回答。", language="zh")
    assert "北京" in result["text"]


def test_spoken_style_answer(conn: redis.Redis, llm_server: str, redis_url: str) -> None:
    result = ask(conn, llm_server, redis_url, "My internet is down. What should I try first?", language="en")
    text = result["text"]
    assert any(w in text.lower() for w in ("router", "modem", "restart", "reboot", "unplug", "turn"))
    for mark in ("**", "##", "```", "\n- ", "\n* "):
        assert mark not in text  # plain sentences for the synthesizer
    assert result["completion_tokens"] <= 160


def test_concurrent_requests_both_finish(conn: redis.Redis, llm_server: str, redis_url: str) -> None:
    """Two workers asking at once: the server queues them instead of cutting the first reply short."""
    questions = ["Name one color of the rainbow.", "Name one planet of the solar system."]
    results: dict[str, dict[str, Any]] = {}

    def one(q: str) -> None:
        results[q] = ask(conn, llm_server, redis_url, q, language="en")

    threads = [threading.Thread(target=one, args=(q,)) for q in questions]
    for t in threads:
        t.start()
        time.sleep(0.2)  # the second arrives while the first is streaming
    for t in threads:
        t.join(120)
    assert set(results) == set(questions)
    for result in results.values():
        assert result["finish_reason"] == "stop" and result["text"].strip()


def test_two_turn_session_remembers_the_name(conn: redis.Redis, llm_server: str, redis_url: str) -> None:
    control = ask(conn, llm_server, redis_url, "What is my name?", language="en")
    assert "alice" not in control["text"].lower()  # without the session the model cannot know it
    first = ask(conn, llm_server, redis_url, "My name is Alice.", language="en", session_id="call-1")
    second = ask(conn, llm_server, redis_url, "What is my name?", language="en", session_id="call-1")
    assert first["history_turns"] == 0 and second["history_turns"] == 1
    assert second["cache"] == "off"  # the same words as the control, but with history: not from the cache
    assert "alice" in second["text"].lower()
    got = sessions.get(conn, "call-1")
    assert got is not None
    assert [t["content"] for t in got["turns"]] == ["My name is Alice.", first["text"], "What is my name?",
                                                    second["text"]]
