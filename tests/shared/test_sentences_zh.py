"""The sentence splitter on Chinese replies: no spaces, full-width punctuation, numbers with . and : inside."""

from __future__ import annotations

import random

import pytest

from shared.sentences import SentenceSplitter, size, split

REPLY = "您好！运费是¥25.50，请您确认。营业时间是9:00到18:00；周末照常营业。还有什么可以帮您？"


def streamed(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    splitter = SentenceSplitter()
    out: list[str] = []
    i = 0
    while i < len(text):
        n = rng.randint(1, 3)
        out += splitter.feed(text[i:i + n])
        i += n
    return out + splitter.flush()


def test_cuts_at_chinese_marks_without_spaces() -> None:
    chunks = split(REPLY)
    # The first chunk goes out at the first sentence end, so the voice starts at once.
    assert chunks[0] == "您好！"
    assert "".join(chunks) == REPLY
    assert all(c[-1] in "。！？；" for c in chunks), chunks
    # Decimal points and clock colons never cut: ¥25.50 and 9:00 stay whole.
    assert any("¥25.50" in c for c in chunks) and any("9:00到18:00" in c for c in chunks)


@pytest.mark.parametrize("seed", range(5))
def test_streamed_deltas_cut_the_same(seed: int) -> None:
    assert streamed(REPLY, seed) == split(REPLY)


def test_first_chunk_may_end_at_a_chinese_comma_once_long() -> None:
    text = "非常抱歉给您带来了不便，我们已经为您安排了退款，预计三个工作日内到账。"
    first = split(text)[0]
    assert first.endswith("，") and size(first) >= 24 and len(first) < len(text)


def test_quotes_and_ellipsis() -> None:
    chunks = split("“收到了吗？”他问。好的……我马上查一下。")
    assert chunks[0] == "“收到了吗？”"  # the closing quote stays with its sentence
    assert "".join(chunks) == "“收到了吗？”他问。好的……我马上查一下。"
