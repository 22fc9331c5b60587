"""The system prompt asks for Chinese when the caller speaks it, in the script the caller reads."""

from __future__ import annotations

from services.llm import prompts

BASE = "You are a helpful support agent."


def test_mandarin_caller_gets_a_simplified_chinese_instruction() -> None:
    for language in ("zh", "zh-CN", "ZH_cn"):
        prompt = prompts.system_prompt(BASE, language)
        assert prompt.startswith(BASE)
        assert prompt.endswith("reply in Chinese (Mandarin, Simplified characters).")


def test_taiwan_and_hong_kong_callers_get_traditional() -> None:
    for language in ("zh-TW", "zh-HK", "zh-Hant"):
        assert prompts.system_prompt(BASE, language).endswith("reply in Chinese (Traditional characters).")


def test_a_typed_chinese_question_without_a_language_gets_chinese() -> None:
    messages = prompts.build("请问你们几点开门？", system=BASE)
    assert "reply in Chinese (Mandarin, Simplified characters)" in messages[0]["content"]
    assert prompts.build("What time do you open?", system=BASE)[0]["content"] == BASE
    # Japanese (kana beside the kanji) is not taken for Chinese.
    assert prompts.build("何時に開きますか？", system=BASE)[0]["content"] == BASE
    # An explicit language wins over the script guess.
    assert "reply in English" in prompts.build("请问你们几点开门？", system=BASE, language="en")[0]["content"]
