"""Which script a Chinese transcript ends in, and the conversion itself (OpenCC, real tables)."""

from __future__ import annotations

import pytest

from services.asr import script
from services.asr.engines.base import Segment, Transcript
from shared import languages

WHISPER_SAID = "廣州市佛地產中間協會分析。"  # whisper base on aishell1_BAC009S0724W0121.wav, language="zh"


@pytest.mark.parametrize(("requested", "heard", "default", "config"), [
    ("zh", "zh", "simplified", "t2s"),
    ("zh-CN", "zh", "traditional", "t2s"),  # a region wins over the default
    ("zh-TW", "zh", "simplified", "s2tw"),
    ("zh-HK", "zh", "simplified", "s2hk"),
    ("zh-Hant", "zh", "simplified", "s2t"),
    ("zh_tw", "zh", "simplified", "s2tw"),
    (None, "zh", "simplified", "t2s"),  # detected Mandarin
    (None, "zh", "traditional", "s2t"),
    ("zh", "zh", "as-is", None),
    (None, "ja", "simplified", None),  # Japanese kanji must not be touched
    ("en", "en", "simplified", None),
    (None, None, "simplified", None),
])
def test_conversion(requested: str | None, heard: str | None, default: script.Script, config: str | None) -> None:
    assert script.conversion(requested, heard, default) == config


def test_simplified_and_traditional() -> None:
    assert script.convert(WHISPER_SAID, "t2s") == "广州市佛地产中间协会分析。"
    assert script.convert("广州市房地产中介协会分析", "s2tw") == "廣州市房地產中介協會分析"
    assert script.convert("Order 25, 谢谢", "t2s") == "Order 25, 谢谢"
    assert script.convert(WHISPER_SAID, None) == WHISPER_SAID


def test_apply_converts_text_and_segments() -> None:
    segment = Segment(0.0, 1.0, WHISPER_SAID, -0.2, 0.01, False)
    transcript = Transcript(WHISPER_SAID, "zh", 1.0, 1.0, [segment])
    script.apply(transcript, "t2s")
    assert transcript.text == segment.text == "广州市佛地产中间协会分析。"


def test_gateway_keeps_traditional_regions() -> None:
    assert languages.check("zh") == languages.check("zh-CN") == languages.check("ZH_cn") == "zh"
    assert languages.check("zh-TW") == "zh-TW" and languages.check("zh_hk") == "zh-HK"
    assert languages.check("zh-Hant-TW") == "zh-Hant" and languages.check("cmn") == "zh"
    # Whisper is still asked for plain zh.
    assert languages.normalize("zh-TW") == languages.normalize("zh-CN") == "zh"
    with pytest.raises(ValueError):
        languages.check("xx-TW")


def test_written_in_chinese() -> None:
    assert languages.written_in_chinese("请问营业时间？")
    assert not languages.written_in_chinese("お問い合わせ時間は？")
    assert not languages.written_in_chinese("What time do you open?")
    assert languages.written_in_chinese("我的订单 A123 什么时候到？")
    assert not languages.written_in_chinese("Where is my order, 订单 7720240615123? It was due on Monday.")
