"""POST /v1/chat: text in, the answer streamed as text deltas and sentence-sized audio chunks."""

from __future__ import annotations

import httpx

from services.llm.knowledge.grounding import DONT_KNOW
from tests.gateway.helpers import decoded_seconds, post_chat, read_sse, types
from tests.llm.knowledge.questions import invented_figures
from tests.stack import Stack

# Long enough that the first sentence is spoken before the last is written, and with no figures in the answer:
# a tenant without documents may not state a number nobody gave (docs/knowledge.md), and the sun's distance or
# heat stopped the reply after its first sentence. "Describe the sea in four short sentences" was too short:
# once, the whole reply was written before the first sentence's audio (CI, 2026-12-03).
LONG_ASK = "Please tell me a long story about a lighthouse keeper and his cat, in at least ten sentences."


def test_chat_text_only(client: httpx.Client) -> None:
    links = post_chat(client, "What colour is a clear daytime sky? Answer in one word.", speak=False)
    assert "audio_url" not in links and "audio_stream_url" not in links
    evs = read_sse(client, links["events_url"])
    assert types(evs)[-1] == "job.done"
    job = evs[-1]["data"]["job"]
    assert job["plan"] == ["llm"] and job["kind"] == "chat_text"
    reply = job["results"]["llm"]["text"]
    assert "blue" in reply.lower(), reply
    assert "".join(e["data"]["text"] for e in evs if e["event"] == "llm.delta") == reply
    assert "tts.chunk" not in types(evs)


# The bundled model, asked these by a tenant with no documents, made up an answer with a figure for each
# (docs/knowledge.md, "A tenant without documents").
BUSINESS_QUESTIONS = ["What are your opening hours?", "How much does delivery cost?", "你们几点开门？", "运费多少钱？"]


def test_a_tenant_without_documents_states_no_figure_nobody_gave(client: httpx.Client) -> None:
    for question in BUSINESS_QUESTIONS:
        links = post_chat(client, question, speak=False)
        evs = read_sse(client, links["events_url"])
        llm = evs[-1]["data"]["job"]["results"]["llm"]
        assert invented_figures(llm["text"], question) == [], (question, llm["text"])
        if llm["cache"] == "miss":  # a cached answer passed the guard when it was given
            assert llm["knowledge"]["outcome"] in ("no_documents", "guarded", "not_found"), llm


# Each got a made-up policy with no figure in it ("Yes, we ship to Canada."), which the guard cannot catch.
POLICY_QUESTIONS = ["Do you ship to Canada?", "Are you open on Sundays?", "Can I return a sofa I bought online?",
                    "你们周末营业吗？"]


def test_a_tenant_without_documents_makes_up_no_policy(client: httpx.Client) -> None:
    for question in POLICY_QUESTIONS:
        links = post_chat(client, question, speak=False)
        llm = read_sse(client, links["events_url"])[-1]["data"]["job"]["results"]["llm"]
        assert llm["text"] in DONT_KNOW.values(), (question, llm["text"])
        assert llm["knowledge"]["outcome"] == "not_found" and llm["knowledge"]["topics"], llm


def test_first_audio_before_the_answer_is_finished(client: httpx.Client) -> None:
    """Ordering: the first sentence's audio is ready before the LLM is done, and chunks come in order."""
    links = post_chat(client, LONG_ASK)
    evs = read_sse(client, links["events_url"])
    kinds = types(evs)
    assert kinds[-1] == "job.done", evs[-1]
    chunks = [e["data"] for e in evs if e["event"] == "tts.chunk"]
    assert len(chunks) >= 2, f"a several-sentence reply must come in several chunks: {chunks}"
    assert kinds.index("tts.chunk") < kinds.index("llm.done"), kinds
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    llm_done = next(e["data"] for e in evs if e["event"] == "llm.done")
    assert llm_done["chunks"] == len(chunks)

    job = evs[-1]["data"]["job"]
    assert job["plan"] == ["llm", "tts"]
    # The chunks say the whole reply, in order.
    said = " ".join(c["text"] for c in chunks)
    assert said.split() == job["results"]["llm"]["text"].split()
    # The full reply is the chunks joined: its length is their sum.
    total = sum(c["duration_s"] for c in job["chunks"])
    assert abs(job["results"]["tts"]["duration_s"] - total) < 0.01
    audio = client.get(links["audio_url"])
    assert audio.status_code == 200
    assert abs(decoded_seconds(audio.content) - total) < 0.05
    assert job["ttfa_s"] is not None and 0 < job["ttfa_s"] < job["stages"]["tts"]["finished_at"] - job["created_at"]


def test_cached_answer_skips_the_llm(client: httpx.Client, stack: Stack) -> None:
    """The same context-free question twice: the second answer comes from the cache, without an LLM call."""
    question = "What colour is a ripe banana? Answer in one sentence."
    first = read_sse(client, post_chat(client, question, speak=False)["events_url"])[-1]["data"]["job"]
    hits = stack.metric("llm", "voicequeue_cache_hits_total", cache="answer")
    tokens = stack.metric("llm", "voicequeue_llm_tokens_total", kind="completion")
    second = read_sse(client, post_chat(client, "  what colour is a RIPE banana?? answer in one sentence ",
                                        speak=False)["events_url"])[-1]["data"]["job"]
    assert first["results"]["llm"]["cache"] == "miss"
    assert second["results"]["llm"]["cache"] == "hit"
    assert second["results"]["llm"]["text"] == first["results"]["llm"]["text"]
    assert second["cost"].get("cache_hits") == 1
    assert stack.metric("llm", "voicequeue_cache_hits_total", cache="answer") == hits + 1
    assert stack.metric("llm", "voicequeue_llm_tokens_total", kind="completion") == tokens, "no LLM call on a hit"
