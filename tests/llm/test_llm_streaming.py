"""Sentence streaming to `tts:live`, sessions and the answer cache in the llm stage (fake OpenAI server, real Redis)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from rq import Queue

from shared import answer_cache, jobs, queues, sessions
from shared.sentences import split
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.llm.helpers import API_KEY, all_events, run_llm, sample, settings_for

REPLY = ("Sure. Your order left our warehouse this morning and is on its way to you now. "
         "It should arrive on Friday, between the morning and the late afternoon. "
         "You will get a text message with the tracking number. Is there anything else I can do?")


def chat_job(conn: redis.Redis, text: str, kind: str = "chat", **options: Any) -> str:
    return jobs.create(conn, kind=kind, priority="live", inputs={"text": text},
                       options={"language": "en", **options}, ttl_s=3600)


def queued_chunks(conn: redis.Redis, priority: str = "live") -> list[tuple[Any, ...]]:
    """(job id, seq, text) of every sentence waiting on `tts:<priority>`, in queue order."""
    q = Queue(queues.name("tts", priority), connection=conn)
    return [tuple(j.args) for j in q.get_jobs() if j.func_name == queues.CHUNK_TASK]


def event_time(event_id: str) -> float:
    return int(event_id.split("-")[0]) / 1000


def test_sentences_are_queued_while_the_reply_streams(conn: redis.Redis, redis_url: str) -> None:
    with FakeOpenAI(default=Reply(REPLY, delta_delay_s=0.04), api_key=API_KEY) as fake:
        job_id = chat_job(conn, "Can you help me with my account?")
        runner = threading.Thread(target=run_llm, args=(conn, settings_for(fake.base_url, redis_url), job_id))
        runner.start()
        deadline = time.monotonic() + 10
        while not queued_chunks(conn) and time.monotonic() < deadline:
            time.sleep(0.005)
        first_seen = queued_chunks(conn)
        deltas_by_then = sum(kind == "llm.delta" for _, kind, _ in all_events(conn, job_id))
        still_streaming = runner.is_alive()
        runner.join(20)
    expected = split(REPLY)
    assert len(expected) >= 4
    assert first_seen == [(job_id, 0, "Sure.")]
    assert still_streaming and deltas_by_then < len(REPLY.split()) // 3

    record = jobs.load(conn, job_id)
    assert record is not None and record["status"] == "running"  # tts is next
    result = record["results"]["llm"]
    assert result["chunks"] == [{"seq": i, "text": t} for i, t in enumerate(expected)]
    assert result["cache"] == "miss" and result["text"] == REPLY
    assert queued_chunks(conn) == [(job_id, i, t) for i, t in enumerate(expected)]
    assert Queue("tts:live", connection=conn).get_job_ids()[-1] == queues.rq_job_id(job_id, "tts")

    # Every sentence but the flushed tail was queued before the last text delta was even received.
    evs = all_events(conn, job_id)
    last_delta = max(event_time(i) for i, kind, _ in evs if kind == "llm.delta")
    enqueued = [float(conn.hget(jobs.key(job_id), f"enq:tts:{seq}") or 0) for seq in range(len(expected))]
    assert enqueued == sorted(enqueued)
    assert all(t < last_delta - 0.2 for t in enqueued[:-2])
    kinds = [kind for _, kind, _ in evs]
    assert kinds.index("llm.done") == kinds.index("stage.done") - 1
    done = next(data for _, kind, data in evs if kind == "llm.done")
    assert done == {"text": REPLY, "chunks": len(expected)}
    assert record["cost"]["completion_tokens"] == len(REPLY.split())
    assert record["cost"]["prompt_tokens"] == result["prompt_tokens"] > 10


def test_chinese_reply_is_cut_at_chinese_punctuation(conn: redis.Redis, redis_url: str) -> None:
    reply = "您好，您的订单明天到。请问还有什么可以帮您？我们每天早上到晚上都营业。"
    with FakeOpenAI(default=Reply(reply, deltas=[reply[i:i + 2] for i in range(0, len(reply), 2)])) as fake:
        job_id = chat_job(conn, "我的账户怎么登录？", language="zh")
        record = run_llm(conn, settings_for(fake.base_url, redis_url), job_id)
    expected = ["您好，您的订单明天到。", "请问还有什么可以帮您？我们每天早上到晚上都营业。"]
    assert [c["text"] for c in record["results"]["llm"]["chunks"]] == expected
    assert [c[2] for c in queued_chunks(conn)] == expected


@pytest.mark.parametrize(("kind", "options"), [("chat", {"stream": False}), ("chat_text", {})])
def test_no_chunks_queued_without_streaming_or_speech(
        conn: redis.Redis, redis_url: str, kind: str, options: dict[str, Any]) -> None:
    with FakeOpenAI(default=Reply(REPLY)) as fake:
        job_id = chat_job(conn, "Can you help me with my account?", kind=kind, **options)
        record = run_llm(conn, settings_for(fake.base_url, redis_url), job_id)
    assert record["status"] == ("running" if kind == "chat" else "done")
    assert queued_chunks(conn) == []
    assert not any(f.startswith(b"enq:tts:") for f in conn.hkeys(jobs.key(job_id)))
    assert [c["text"] for c in record["results"]["llm"]["chunks"]] == split(REPLY)  # the tts stage speaks them


def test_second_identical_question_is_a_cache_hit_without_an_llm_call(conn: redis.Redis, redis_url: str) -> None:
    hits, misses = sample("voicequeue_cache_hits_total", cache="answer"), sample(
        "voicequeue_cache_misses_total", cache="answer")
    prompt_tokens = sample("voicequeue_llm_tokens_total", kind="prompt")
    with FakeOpenAI(default=Reply(REPLY)) as fake:
        settings = settings_for(fake.base_url, redis_url)
        first = run_llm(conn, settings, chat_job(conn, "Can you help me with my account?"))
        assert len(fake.chat_requests) == 1
        assert sample("voicequeue_cache_misses_total", cache="answer") - misses == 1
        conn.delete("tts:live", "rq:queue:tts:live")
        tokens_after_first = sample("voicequeue_llm_tokens_total", kind="prompt")
        job_id = chat_job(conn, "  can you help me with my ACCOUNT ")
        second = run_llm(conn, settings, job_id)
        assert len(fake.chat_requests) == 1  # no second request
    assert first["results"]["llm"]["cache"] == "miss"
    result = second["results"]["llm"]
    assert result["cache"] == "hit" and result["text"] == REPLY
    assert result["prompt_tokens"] == result["completion_tokens"] == 0
    assert sample("voicequeue_cache_hits_total", cache="answer") - hits == 1
    assert sample("voicequeue_cache_misses_total", cache="answer") - misses == 1
    assert sample("voicequeue_llm_tokens_total", kind="prompt") == tokens_after_first > prompt_tokens
    assert second["cost"] == {"cache_hits": 1.0, "prompt_tokens": 0.0, "completion_tokens": 0.0}
    assert first["cost"].get("cache_hits", 0) == 0
    assert queued_chunks(conn) == [(job_id, i, t) for i, t in enumerate(split(REPLY))]
    evs = all_events(conn, job_id)
    assert [d for _, k, d in evs if k == "llm.delta"] == [{"text": REPLY, "index": 0}]
    assert [d for _, k, d in evs if k == "llm.done"] == [{"text": REPLY, "chunks": len(split(REPLY))}]


def test_faq_answer_hits_a_differently_written_question(conn: redis.Redis, redis_url: str, tmp_path: Any) -> None:
    faq = tmp_path / "faq.yaml"
    faq.write_text("- question: How do I reset my password?\n  answer: Use the forgot-password link.\n")
    with FakeOpenAI() as fake:
        settings = settings_for(fake.base_url, redis_url)
        answer_cache.load_faq(conn, faq, system_prompt=settings.llm_system_prompt, model=settings.llm_model,
                              languages=["en"], ttl_s=60, tenant=answer_cache.GLOBAL)
        record = run_llm(conn, settings, chat_job(conn, "how do I reset my PASSWORD"))
        other = run_llm(conn, settings, chat_job(conn, "how do I reset my password", language="fr"))
        assert len(fake.chat_requests) == 1  # the French caller's question was not in the FAQ
    assert record["results"]["llm"]["text"] == "Use the forgot-password link."
    assert other["results"]["llm"]["cache"] == "miss"


def test_unfinished_reply_is_not_cached(conn: redis.Redis, redis_url: str) -> None:
    with FakeOpenAI(default=Reply("This reply was cut", finish_reason="length")) as fake:
        settings = settings_for(fake.base_url, redis_url)
        run_llm(conn, settings, chat_job(conn, "Tell me everything."))
        run_llm(conn, settings, chat_job(conn, "Tell me everything."))
        assert len(fake.chat_requests) == 2


def test_cache_can_be_turned_off(conn: redis.Redis, redis_url: str) -> None:
    with FakeOpenAI() as fake:
        settings = settings_for(fake.base_url, redis_url, llm_answer_cache=False)
        for _ in range(2):
            record = run_llm(conn, settings, chat_job(conn, "hello"))
            assert record["results"]["llm"]["cache"] == "off"
        assert len(fake.chat_requests) == 2
    assert not conn.keys("vq:answer:*")


def test_session_history_is_sent_in_order_and_the_turn_is_kept(conn: redis.Redis, redis_url: str) -> None:
    sessions.append_turn(conn, "s-1", "My name is Alice.", "Nice to meet you, Alice.", max_turns=10, ttl_s=60)
    sessions.append_turn(conn, "s-1", "I live in Paris.", "Paris is lovely.", max_turns=10, ttl_s=60)
    with FakeOpenAI(default=Reply("You are Alice from Paris.")) as fake:
        settings = settings_for(fake.base_url, redis_url, session_ttl_s=900)
        job_id = chat_job(conn, "Who am I?", session_id="s-1")
        record = run_llm(conn, settings, job_id)
        messages = fake.chat_requests[0].body["messages"]
    assert messages[0]["role"] == "system"
    assert messages[1:] == [
        {"role": "user", "content": "My name is Alice."},
        {"role": "assistant", "content": "Nice to meet you, Alice."},
        {"role": "user", "content": "I live in Paris."},
        {"role": "assistant", "content": "Paris is lovely."},
        {"role": "user", "content": "Who am I?"},
    ]
    result = record["results"]["llm"]
    assert result["cache"] == "off" and result["history_turns"] == 2
    assert sessions.history(conn, "s-1", 10)[-2:] == [
        {"role": "user", "content": "Who am I?"}, {"role": "assistant", "content": "You are Alice from Paris."}]
    assert 890 <= conn.ttl(sessions.key("s-1")) <= 900


def test_cache_is_skipped_when_the_session_has_history(conn: redis.Redis, redis_url: str) -> None:
    with FakeOpenAI(script=[Reply("The first answer."), Reply("It depends on what you said.")]) as fake:
        settings = settings_for(fake.base_url, redis_url)
        first = run_llm(conn, settings, chat_job(conn, "Why?", session_id="new"))  # no history yet: cached
        second = run_llm(conn, settings, chat_job(conn, "Why?", session_id="new"))
        assert len(fake.chat_requests) == 2
    assert first["results"]["llm"]["cache"] == "miss"
    assert second["results"]["llm"]["cache"] == "off"
    assert second["results"]["llm"]["text"] == "It depends on what you said."
    assert [m["content"] for m in sessions.history(conn, "new", 10)] == [
        "Why?", "The first answer.", "Why?", "It depends on what you said."]


def test_session_keeps_only_the_last_turns(conn: redis.Redis, redis_url: str) -> None:
    with FakeOpenAI() as fake:
        settings = settings_for(fake.base_url, redis_url, session_max_turns=2, llm_answer_cache=False)
        for i in range(4):
            run_llm(conn, settings, chat_job(conn, f"question {i}", session_id="short"))
        sent = fake.chat_requests[-1].body["messages"]
    assert [m["content"] for m in sent[1:] if m["role"] == "user"] == ["question 1", "question 2", "question 3"]
    assert [m["content"] for m in sessions.history(conn, "short", 10) if m["role"] == "user"] == [
        "question 2", "question 3"]


def test_cancel_stops_queueing_sentences(conn: redis.Redis, redis_url: str) -> None:
    reply = " ".join(["This is yet another sentence of a very long answer that goes on."] * 30)
    with FakeOpenAI(default=Reply(reply, delta_delay_s=0.02)) as fake:
        job_id = chat_job(conn, "Talk a lot", session_id="cancelled")
        runner = threading.Thread(target=run_llm, args=(conn, settings_for(fake.base_url, redis_url), job_id))
        runner.start()
        deadline = time.monotonic() + 10
        while len(queued_chunks(conn)) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        jobs.put_status(conn, job_id, "cancelled")
        at_cancel = len(queued_chunks(conn))
        runner.join(10)
    assert not runner.is_alive()
    assert at_cancel >= 2
    assert len(queued_chunks(conn)) <= at_cancel + 1 < len(split(reply))
    record = jobs.load(conn, job_id)
    assert record is not None and record["status"] == "cancelled" and "llm" not in record["results"]
    assert sessions.get(conn, "cancelled") is None
    assert not conn.keys("vq:answer:*")
    assert "llm.done" not in [kind for _, kind, _ in all_events(conn, job_id)]
