"""PII redaction: what must be replaced, and the numbers a caller needs kept (prices, dates, order numbers)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from shared import redact
from shared.redact import cn_id_valid, is_local_url, luhn

# (text, expected text after redaction)
REDACTED = [
    # Chinese mobiles, bare, grouped, with country codes, next to CJK characters, full-width, spoken digits
    ("13812345678", "[PHONE]"),
    ("我的手机号是13812345678，谢谢", "我的手机号是[PHONE]，谢谢"),
    ("call me on 138 1234 5678 please", "call me on [PHONE] please"),
    ("号码 138-1234-5678。", "号码 [PHONE]。"),
    ("+86 139 1234 5678", "[PHONE]"),
    ("+8613912345678", "[PHONE]"),
    ("tel 0086-138-1234-5678", "tel [PHONE]"),
    ("手机：１３８１２３４５６７８", "手机：[PHONE]"),
    ("我的手机是一三八一二三四五六七八", "我的手机是[PHONE]"),
    ("电话幺三八幺二三四五六七八", "电话[PHONE]"),
    # international and national formats
    ("Reach us at +1 (415) 555-0100.", "Reach us at [PHONE]."),
    ("+44 20 7946 0958", "[PHONE]"),
    ("ring 020 7946 0958 today", "ring [PHONE] today"),
    ("(415) 555-0100", "[PHONE]"),
    ("415-555-0100 or 415.555.0101", "[PHONE] or [PHONE]"),
    ("电话：010-12345678", "电话：[PHONE]"),
    ("联系电话 0755 8888 1234", "联系电话 [PHONE]"),
    ("fax +44 (0)20 7946 0958", "fax [PHONE]"),
    ("my phone is 5550100", "my phone is [PHONE]"),
    # emails
    ("mail John.Smith+vq@mail.example.co.uk.", "mail [EMAIL]."),
    ("邮箱是abc.d@example.com谢谢", "邮箱是[EMAIL]谢谢"),
    ("a@b.io and c_d@e-f.org", "[EMAIL] and [EMAIL]"),
    # payment cards (Luhn-valid)
    ("card 4111 1111 1111 1111 exp 12/26", "card [CARD] exp 12/26"),
    ("Visa 4111-1111-1111-1111.", "Visa [CARD]."),
    ("amex 3782 822463 10005", "amex [CARD]"),
    ("我的银行卡号是6222021234567890128", "我的银行卡号是[CARD]"),
    ("mc 5555555555554444", "mc [CARD]"),
    # ID numbers
    ("身份证11010519491231002X", "身份证[ID]"),
    ("ID: 11010519491231002x", "ID: [ID]"),
    ("我的身份证号是 440306199003071232 。", "我的身份证号是 [ID] 。"),
    ("SSN 123-45-6789", "SSN [ID]"),
    ("my passport is E12345678", "my passport is [ID]"),
    ("account number 12345678", "account number [ID]"),
    ("我的账号是 6222 0212 3456 7890", "我的账号是 [ID]"),
    ("member number: 004512873", "member number: [ID]"),
    # several kinds in one text
    ("I'm at 13812345678 or bob@example.com, card 4111111111111111",
     "I'm at [PHONE] or [EMAIL], card [CARD]"),
]

KEPT = [
    "The total is 1,299.00 dollars.",
    "价格是 ¥12,800，打八折",
    "pay ¥88.50 for 3 items",
    "The meeting is at 14:30 on 15/06/2024.",
    "2024年6月15日下午3点",
    "Delivered on 2024-01-15 at 10:30",
    "I got a new phone on 2024-01-15",
    "room 1203 on floor 12",
    "qty 1000000 units",
    "weigh 70 kg, 1.75 m",
    "version 1.2.3 of the app",
    "order 4111 1111 1111 1112",  # fails Luhn
    "订单号 202406151234567893",  # an order number: fails Luhn, no ID word
    "order ID 2024061512345",
    "my order number is 7720240615123",
    "tracking number 1Z999AA10123456784",
    "a 1234567890123456789 b",
    "timestamp 1700000000000",
    "hotel room 1234567",
    "user@localhost is not an address",
    "@handle 12345",
    "Call 555-0100",
    "我有三个问题，一是价格，二是时间",
    "worker 1a9d90c66bcf4f4187e3eea207bd058b took job a13812345678b",  # digits inside ids and tokens
    "serial 138123456789",  # 12 digits: not a mobile
    "member number: 12345",  # too short for an ID
]


@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_redacts(text: str, expected: str) -> None:
    assert redact.redact(text).text == expected


@pytest.mark.parametrize("text", KEPT)
def test_keeps(text: str) -> None:
    result = redact.redact(text)
    assert result.text == text and not result.found


def test_counts_by_kind_and_only_the_kinds_asked() -> None:
    text = "13812345678, +1 415 555 0100, bob@example.com, 4111111111111111, 11010519491231002X"
    result = redact.redact(text)
    assert dict(result.counts) == {"phone": 2, "email": 1, "card": 1, "id": 1}
    only = redact.redact(text, ["email"])
    assert only.text == "13812345678, +1 415 555 0100, [EMAIL], 4111111111111111, 11010519491231002X"
    assert redact.redact(text, []).text == text


def test_checksums() -> None:
    assert luhn("4111111111111111") and luhn("378282246310005") and not luhn("4111111111111112")
    assert cn_id_valid("11010519491231002X") and cn_id_valid("440306199003071232")
    assert not cn_id_valid("440306199003071231")  # check digit
    assert not cn_id_valid("440306199002301232")  # 30 February
    # the order number kept above really fails Luhn (else it would be a card)
    assert not luhn("202406151234567893") and not luhn("4111111111111112")


def test_scrub_counts_in_metrics() -> None:
    def count(kind: str) -> float:
        return REGISTRY.get_sample_value("voicequeue_pii_redactions_total", {"kind": kind, "where": "test"}) or 0.0

    before = count("phone"), count("email")
    assert redact.scrub("13812345678 and 13912345678, a@b.io", where="test") == "[PHONE] and [PHONE], [EMAIL]"
    assert (count("phone") - before[0], count("email") - before[1]) == (2.0, 1.0)


@pytest.mark.parametrize(("url", "local"), [
    ("http://127.0.0.1:8080/v1", True),
    ("http://localhost:11434/v1", True),
    ("http://[::1]:8080/v1", True),
    ("http://llm-server:8080/v1", True),  # the compose service
    ("http://10.1.2.3:8000/v1", True),
    ("http://vllm.ai.svc.cluster.local/v1", True),
    ("https://api.openai.com/v1", False),
    ("https://dashscope.aliyuncs.com/compatible-mode/v1", False),
    ("http://8.8.8.8/v1", False),
])
def test_local_urls(url: str, local: bool) -> None:
    assert is_local_url(url) is local
