"""The negative passage sentence a yes/no question meets, and what counts as a reply saying yes."""

from __future__ import annotations

import pytest

from services.llm.knowledge import polarity

WARRANTY = ("Every phone bought from us has a 2-year warranty. The warranty does not cover water damage or a "
            "cracked screen.")
ROAMING = "Roaming in Canada and Mexico is included in the Plus plan. Roaming in other countries costs $10 a day."


@pytest.mark.parametrize("question", ["Does the warranty cover a cracked screen?", "Is water damage covered by "
                                      "the warranty?", "  can the warranty pay for a cracked screen"])
def test_a_yes_no_question_meets_the_negative_sentence_it_matches_best(question: str) -> None:
    assert polarity.denial(question, [ROAMING, WARRANTY]) == ("The warranty does not cover water damage or a "
                                                              "cracked screen.")


@pytest.mark.parametrize("question", [
    "Is roaming in Mexico included?",  # the best sentence is not negative
    "What does the warranty cover?",  # not a yes/no question
    "Tell me about the warranty",
    "保修包括屏幕碎裂吗？",  # Chinese: left to the model
    "Do you sell cars?",  # no shared word at all
])
def test_no_denial(question: str) -> None:
    assert polarity.denial(question, [ROAMING, WARRANTY]) is None


def test_the_best_match_decides_not_any_negative_sentence() -> None:
    texts = ["Our support line is open Monday to Saturday from 7 a.m. to 9 p.m. We are not open on Sundays."]
    assert polarity.denial("Is the support line open on Saturday?", texts) is None
    assert polarity.denial("Are you open on Sundays?", texts) == "We are not open on Sundays."


@pytest.mark.parametrize(("reply", "yes"), [
    ("Yes, the warranty covers it.", True), ("yes.", True), ("Sure, ", True), ("Of course!", True),
    ("No, it does not.", False), ("The warranty does not cover it.", False), ("Yesterday we", False),
    ("I'm sorry,", False),
])
def test_says_yes(reply: str, yes: bool) -> None:
    assert polarity.says_yes(reply) is yes
