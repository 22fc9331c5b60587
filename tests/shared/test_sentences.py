"""The sentence splitter that turns a streamed reply into speakable chunks."""

from __future__ import annotations

import random

import pytest

from shared.sentences import SentenceSplitter, size, split

TEXTS = [
    "Sure. Your order left our warehouse today and should arrive on Friday. Thanks for waiting! "
    "Is there anything else I can help you with today?",
    "Mr. Smith paid $1,000.50 for 3.5 kilos at 9 a.m. on Monday. Dr. Lee said it was fine, e.g. for now.",
    'He said "Stop!" Then he left... Fine. The U.S. office opens at 10 a.m. and closes at 6 p.m. every day.',
    "您好，您的订单明天到。请问还有什么可以帮您？我们的营业时间是早上九点到晚上六点；周末休息。谢谢您的来电！",
    "Well, that depends on a few things, like the plan you chose and where you live. Let me check for you.",
    "1. Restart the router.\n2. Check the cables are firmly plugged in.\n3. Call us again if it still fails.",
]


def streamed(text: str, seed: int, **kwargs: int) -> list[str]:
    """Feed `text` in random 1-3 character deltas, like an LLM's tokens."""
    rng = random.Random(seed)
    splitter = SentenceSplitter(**kwargs)
    out: list[str] = []
    i = 0
    while i < len(text):
        n = rng.randint(1, 3)
        out += splitter.feed(text[i:i + n])
        i += n
    return out + splitter.flush()


@pytest.mark.parametrize("text", TEXTS)
def test_token_deltas_give_the_same_chunks_as_the_whole_text(text: str) -> None:
    whole = split(text)
    assert len(whole) >= 2
    for seed in range(20):
        assert streamed(text, seed) == whole
    one_by_one = SentenceSplitter()
    chars = [c for ch in text for c in one_by_one.feed(ch)] + one_by_one.flush()
    assert chars == whole


@pytest.mark.parametrize("text", TEXTS)
def test_no_text_is_lost(text: str) -> None:
    assert "".join(split(text)).replace(" ", "") == "".join(text.split())


def test_first_chunk_is_the_first_sentence_later_ones_are_merged() -> None:
    chunks = split(TEXTS[0])
    assert chunks == [
        "Sure.",
        "Your order left our warehouse today and should arrive on Friday.",
        "Thanks for waiting! Is there anything else I can help you with today?",
    ]
    assert all(size(c) >= 60 for c in chunks[1:])


def test_numbers_abbreviations_and_currency_do_not_end_a_sentence() -> None:
    assert split(TEXTS[1]) == [
        "Mr. Smith paid $1,000.50 for 3.5 kilos at 9 a.m. on Monday.",
        "Dr. Lee said it was fine, e.g. for now.",
    ]
    assert split("Version 2.0 costs 3.5 dollars. Ask J. Smith, i.e. the manager, or Mrs. Brown vs. Mr. Green.") == [
        "Version 2.0 costs 3.5 dollars.",
        "Ask J. Smith, i.e. the manager, or Mrs. Brown vs. Mr. Green.",
    ]


def test_closing_quotes_and_ellipses_stay_with_their_sentence() -> None:
    assert split(TEXTS[2]) == [
        'He said "Stop!"',
        "Then he left... Fine. The U.S. office opens at 10 a.m. and closes at 6 p.m. every day.",
    ]
    assert split("（好的！）谢谢您。「我明白了。」再见。") == ["（好的！）", "谢谢您。「我明白了。」再见。"]


def test_chinese_punctuation() -> None:
    assert split(TEXTS[3]) == [
        "您好，您的订单明天到。",
        "请问还有什么可以帮您？我们的营业时间是早上九点到晚上六点；",
        "周末休息。谢谢您的来电！",
    ]


def test_a_long_first_sentence_starts_at_a_comma_but_not_inside_a_number() -> None:
    assert split(TEXTS[4])[0] == "Well, that depends on a few things,"  # "Well," alone is too short
    assert split("The total comes to 1,250 dollars and 75 cents, including tax and delivery. Okay.")[0] == (
        "The total comes to 1,250 dollars and 75 cents,")


def test_newlines_end_sentences_and_list_numbers_do_not() -> None:
    assert split(TEXTS[5]) == [
        "1. Restart the router.",
        "2. Check the cables are firmly plugged in. 3. Call us again if it still fails.",
    ]


def test_nothing_is_emitted_before_the_boundary_is_certain() -> None:
    s = SentenceSplitter()
    assert s.feed("It costs 3.") == []  # "3." may become "3.5"
    assert s.feed("5 dollars.") == []  # "dollars." may be followed by a quote
    assert s.feed(" Thanks") == ["It costs 3.5 dollars."]
    assert s.feed(".") == []
    assert s.flush() == ["Thanks."]
    assert s.flush() == []


def test_sizes_are_settable() -> None:
    text = "One. Two. Three. Four. Five. Six."
    assert split(text) == ["One.", "Two. Three. Four. Five. Six."]
    splitter = SentenceSplitter(min_chars=10)
    assert splitter.feed(text) + splitter.flush() == ["One.", "Two. Three.", "Four. Five.", "Six."]


def test_empty_and_whitespace() -> None:
    assert split("") == []
    assert split("  \n ") == []
    assert split("No punctuation at all") == ["No punctuation at all"]
