"""What the caller heard, from each sentence's recorded audio length and, when the TTS engine gives them, its words' end
times (not a characters-per-second guess)."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from services.gateway.calls.session import CallSession, Item, Sentence
from services.gateway.config import GatewaySettings


def reply(sentences: list[tuple[str, float]], heard_ms: float | None) -> Item:
    item = Item("item_1", "assistant", " ".join(t for t, _ in sentences), 0.0, audio=True)
    start = 0.0
    for text, duration in sentences:
        item.sentences.append(Sentence(text, start, duration))
        start += duration
    item.sent_ms, item.heard_ms = start, heard_ms
    return item


def test_whole_sentences_by_their_audio_length() -> None:
    # The first sentence is short in characters but long in audio: a chars/s estimate would get this wrong.
    sentences = [("Hmm, well.", 2500.0), ("Your order ships tomorrow morning by express courier.", 2000.0),
                 ("Anything else?", 900.0)]
    assert reply(sentences, None).heard_text() == reply(sentences, 5400).heard_text()
    assert reply(sentences, 2500).heard_text() == "Hmm, well."
    assert reply(sentences, 2400).heard_text() == "Hmm, well…"
    half = reply(sentences, 3500).heard_text()
    assert half.startswith("Hmm, well. Your order ships") and half.endswith("…")
    assert "courier" not in half and "Anything" not in half  # cut at a word boundary, nothing unheard
    assert reply(sentences, 0).heard_text() == ""


def test_word_times_from_the_tts_engine_place_the_cut() -> None:
    """With the engine's word end times the cut falls after the last word that ended, whatever the
    characters: a long pause after "Well," leaves the rest unheard although it is most of the text."""
    item = Item("item_1", "assistant", "Well, your order ships tomorrow.", 0.0, audio=True)
    item.sentences.append(Sentence("Well, your order ships tomorrow.", 0.0, 3000.0,
                                   [1400.0, 1900.0, 2200.0, 2500.0, 3000.0]))
    item.sent_ms = 3000.0
    for heard_ms, text in ((1000, ""), (1400, "Well,…"), (2100, "Well, your…"), (2900, "Well, your order ships…"),
                           (3000, "Well, your order ships tomorrow.")):
        item.heard_ms = heard_ms
        assert item.heard_text() == text, heard_ms
    item.heard_ms = 1500
    assert item.sentences[0].heard(1500) == "Well,…"
    item.sentences[0].word_ends_ms = None  # no word times: by characters, which puts the cut further on
    assert item.heard_text() == "Well, your order…"


def test_chinese() -> None:
    sentences = [("您好，欢迎致电。", 1800.0), ("请问有什么可以帮您？", 2200.0), ("我们今天营业到晚上九点。", 2600.0)]
    assert reply(sentences, 4000).heard_text() == "您好，欢迎致电。 请问有什么可以帮您？"
    part = reply(sentences, 1800 + 1100).heard_text()
    assert part == "您好，欢迎致电。 请问有什么…"  # half of the second sentence's audio: half its characters


def test_history_keeps_the_callers_words_and_only_what_was_heard(redis_url: str) -> None:
    conn, aconn = redis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)

    async def send(_event: dict[str, object]) -> None:
        return None

    session = CallSession(conn=conn, aconn=aconn, settings=GatewaySettings(call_history_turns=2), tenant="t",
                          send=send, transport="test")
    session.items = [
        Item("i1", "user", "Where is my parcel?", 1.0),
        reply([("It left the depot.", 1500.0), ("It arrives on Friday.", 1500.0)], 1500),
        Item("i3", "user", "Sorry, say that again?", 3.0),  # a turn the caller cut off before any reply
        Item("i4", "user", "Which depot?", 4.0),
    ]
    text, history = session.history()
    assert text == "Sorry, say that again? Which depot?"
    assert history == [{"role": "user", "content": "Where is my parcel?"},
                       {"role": "assistant", "content": "It left the depot."}]
    session.items = [Item(f"u{i}", "user" if i % 2 == 0 else "assistant", f"m{i}", float(i)) for i in range(9)]
    text, history = session.history()
    assert text == "m8" and [m["content"] for m in history] == ["m4", "m5", "m6", "m7"]  # the last 2 exchanges
    conn.close()
