"""Which questions a tenant without documents answers with the don't-know line, without the model."""

from __future__ import annotations

import pytest

from services.llm.config import SYSTEM_PROMPT
from services.llm.knowledge.topics import untold

# What the bundled model answered with a made-up policy or figure for a tenant without documents.
BUSINESS = [("Do you ship to Canada?", ["delivery"]), ("Are you open on Sundays?", ["hours"]),
            ("What are your opening hours?", ["hours"]), ("What time do you close on weekdays?", ["hours"]),
            ("How much does delivery cost?", ["delivery", "prices"]), ("How much is the desk lamp?", ["prices"]),
            ("Can I return a sofa I bought online?", ["returns"]), ("Can I pay with a credit card?", ["payment"]),
            ("Where are you located?", ["location"]), ("你们几点开门？", ["hours"]),
            ("运费多少钱？", ["delivery", "prices"]), ("可以退货吗？", ["returns"]), ("你们周末营业吗？", ["hours"]),
            ("Where is my order?", ["orders"]), ("我的订单在哪里？", ["orders"])]
# Words that look like those topics but ask something else: these still reach the model (and its actions).
OTHER = ["Please open a ticket about my broken lamp.", "I want to close my account.", "Have you opened my ticket?",
         "and mister john dashwood had then leisure to consider how much there might be prudently in his power",
         "What do I need in order to log in?", "What's two plus two?", "I want to talk to a person.",
         "Tell me a story about a lighthouse keeper.", "Hello, how are you?"]


@pytest.mark.parametrize(("question", "topics"), BUSINESS)
def test_business_questions_nobody_told_the_bot_about(question: str, topics: list[str]) -> None:
    assert untold(question, SYSTEM_PROMPT) == topics


@pytest.mark.parametrize("question", OTHER)
def test_other_questions_reach_the_model(question: str) -> None:
    assert untold(question, SYSTEM_PROMPT) == []


def test_a_prompt_that_mentions_the_topic_lets_the_model_answer() -> None:
    told = f"{SYSTEM_PROMPT}\n\nYou answer for Birch Books. We ship to the UK only; returns within a month."
    assert untold("Do you ship to Canada?", told) == []
    assert untold("Can I return a book?", told) == []
    assert untold("How much does delivery cost?", told) == ["prices"]  # shipping was told about, prices not
    assert untold("门店地址在哪里？", "我们的门店地址是南京路。") == []
    # A prompt is read loosely: one that may give the answer lets the model give it.
    assert untold("When are you open?", "Birch Books. Open 9 a.m. to 7 p.m. on weekdays.") == []
    assert untold("How much is delivery?", "Delivery is $5 within the city.") == []
