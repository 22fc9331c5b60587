"""Questions on the fixture shop with the fact each answer must contain (any one spelling, after `norm`),
and questions its documents cannot answer. Shared by tests/llm/knowledge/test_answers.py and
bench/knowledge.py."""

from __future__ import annotations

import re
import unicodedata

ANSWERABLE: list[tuple[str, list[str]]] = [
    ("What time do you open on Saturdays?", ["10", "ten"]),
    ("Are you open on Sundays?", ["closed", "not open", "aren't open", "are not open"]),
    ("What time does the shop close on weekdays?", ["7", "seven"]),
    ("When is the phone support line staffed?", ["8", "eight"]),
    ("Is the shop open on Christmas Day?", ["closed", "not open"]),
    ("How long do I have to return an item?", ["30", "thirty"]),
    ("How long does it take to get a refund?", ["5 business", "five business", "5 working", "five working"]),
    ("Can I return something I bought in the clearance sale?", ["final sale", "cannot be returned",
                                                                "can't be returned", "not be returned",
                                                                "cannot return", "can't return", "damaged"]),
    ("How much does standard delivery cost?", ["4.95", "4 95", "four ninety five", "four dollars and ninety five",
                                               "four dollars ninety five"]),
    ("When is standard delivery free?", ["50", "fifty"]),
    ("How much is express delivery?", ["12", "twelve"]),
    ("Do you ship internationally?", ["only deliver within", "do not ship", "don't ship", "not ship",
                                      "only within", "within the country"]),
    ("How much is the oak dining table?", ["499", "four hundred ninety nine", "four hundred and ninety nine"]),
    ("How much does a ceramic mug cost?", ["14", "fourteen"]),
    ("How many points do I need for a voucher?", ["100", "hundred"]),
    ("Where is your shop?", ["harbour street"]),
    ("How long can I park for free?", ["2 hours", "two hours"]),
    ("How long is a gift card valid?", ["3 years", "three years"]),
    # The model opens many yes/no questions with "Yes" whatever the passage says (services/llm/knowledge/polarity.py)
    ("Can a lost gift card be replaced?", ["cannot be replaced", "can't be replaced", "not be replaced",
                                           "cannot replace", "can't replace", "not replace"]),
    ("What do Moss Club members get on their birthday?", ["10", "ten percent"]),
    ("上海门店周末几点开门？", ["10", "十点", "十"]),
    ("退款多久能到账？", ["3到5", "3至5", "三到五", "三至五", "3 5", "35个"]),
    ("上海市内配送运费是多少？", ["12", "十二"]),
    ("订单满多少元免运费？", ["200", "两百", "二百"]),
    ("收货后多少天内可以退换货？", ["15", "十五"]),
    ("定制商品可以退换吗？", ["不支持", "不能", "不可以", "不可", "无法"]),
]

UNANSWERABLE: list[str] = [
    "Do you sell cars?",
    "What is the name of the store manager?",
    "Do you have a shop in Paris?",
    "What is your fax number?",
    "How many employees work at your company?",
    "In which year was the company founded?",
    "Do you offer financing with monthly payments?",
    "What is the Wi-Fi password in the shop?",
    "Can I pay with Bitcoin?",
    "How much does a leather sofa cost?",
    "你们卖汽车吗？",
    "你们公司有多少员工？",
]

TRANSFER_WORDS = ("transfer", "colleague", "human", "person", "someone", "agent", "representative", "转接", "人工",
                  "客服")


def norm(text: str) -> str:
    """Lower case, NFKC, punctuation and hyphens to spaces (digits keep their decimal point), one space."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    text = re.sub(r"(?<=\d)[,](?=\d{3})", "", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    text = re.sub(r"[^\w\s.']|_", " ", text)
    return " ".join(text.split())


def has_fact(reply: str, spellings: list[str]) -> bool:
    got = norm(reply)
    return any(norm(s) in got for s in spellings)


UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
    "seventeen eighteen nineteen twenty"
TENS = "thirty forty fifty sixty seventy eighty ninety"
NUMBER_WORDS = {w: str(n) for n, w in enumerate(UNITS.split())} | {
    w: str(10 * n) for n, w in enumerate(TENS.split(), 3)}


def invented_figures(reply: str, sources: str) -> list[str]:
    """Numbers in `reply` (digit groups, and number words but 'one') that `sources` never states: written
    independently of the worker's own guard, so a test of the guard is not the guard testing itself."""
    source_digits = set(re.findall(r"\d+", norm(sources)))
    source_words = set(norm(sources).split())
    invented = [d for d in re.findall(r"\d+", norm(reply)) if d not in source_digits]
    for word in norm(reply).split():
        if word in NUMBER_WORDS and word != "one" and word not in source_words \
                and NUMBER_WORDS[word] not in source_digits:
            invented.append(word)
    return invented
