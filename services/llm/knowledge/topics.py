"""Questions about the business that a tenant without documents has told the bot nothing about.

Without documents the bundled model answers a question about the business as if it knew: "Do you ship to
Canada?" → "Yes, we ship to Canada.", "Are you open on Sundays?" → "Yes, I'm open on Sundays.". The figure
guard stops a made-up price or time, but a made-up policy has no number in it. So a question on one of
these topics, when the tenant's system prompt does not mention the topic either, gets the don't-know line
without asking the model, as a question nothing in a knowledge base answers does.

The lists are kept narrow on purpose: a word here turns the model away from every such question.
"""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z]+")


def _topic(english: str, chinese: str) -> tuple[frozenset[str], tuple[str, ...]]:
    return frozenset(english.split()), tuple(chinese.split())


TOPICS = {
    "hours": _topic("hours weekend weekends sunday sundays saturday saturdays holiday holidays",
                    "营业 开门 关门 周末 节假日 星期天 星期日 周日 周六"),
    "delivery": _topic("ship ships shipping shipped deliver delivers delivered delivery deliveries courier postage "
                       "dispatch",
                       "运费 快递 发货 配送 送货 邮寄 包邮 物流"),
    "returns": _topic("return returns returned refund refunds refunded exchange exchanges warranty guarantee",
                      "退货 退款 换货 退换 保修"),
    "prices": _topic("price prices pricing cost costs fee fees charge charges discount discounts coupon coupons",
                     "价格 价钱 多少钱 费用 收费 优惠 折扣"),
    "payment": _topic("pay paying payment payments cash paypal invoice invoices instalments",
                      "付款 支付 信用卡 现金 发票 分期"),
    "location": _topic("address located location locations parking branch branches",
                       "地址 停车 门店 分店"),
    # An order's status needs the tenant's order system (a tool, /v1/tools): "Where is my order?" got "Your
    # order is in the kitchen." A tenant with an order tool gets the model, which calls it.
    "orders": _topic("tracking parcel parcels", "订单 包裹 单号"),
}
# "open" and "close" alone are too often something else ("open a ticket", "close my account").
# "how much" alone is not about a price either ("how much there might be in his power to do").
PHRASES = {"credit card": "payment", "where are you": "location",
           **dict.fromkeys(["my order", "my orders", "an order", "the order", "our order", "order number",
                            "order status", "my package", "track my"], "orders"),
           **dict.fromkeys(["how much is", "how much are", "how much for", "how much does it", "how much would it",
                            "how much will it", "how much do you charge"], "prices"),
           **dict.fromkeys(["you open", "open on", "open at", "open until", "open today", "open tomorrow",
                            "opening time", "you close", "close on", "close at", "closing time", "closed on",
                            "store open", "shop open"], "hours")}


def topics(text: str) -> set[str]:
    """The business topics `text` is about."""
    said = WORD.findall(text.lower())
    spaced = f" {' '.join(said)} "
    return {name for name, words in TOPICS.items() if _has(text, said, words)} | {
        name for phrase, name in PHRASES.items() if f" {phrase} " in spaced}


# What a prompt may say a topic with, beyond the words above: "Open 9 a.m. to 7 p.m. on weekdays.",
# "Delivery is $5.". Read loosely: a prompt that might tell the model the answer lets the model answer.
MENTIONS = {"hours": _topic("open opens opening close closes closing closed weekday weekdays", ""),
            "prices": _topic("", "$ £ € ¥ 元 块")}


def mentioned(system: str) -> set[str]:
    """The topics a tenant's prompt says something about."""
    said = WORD.findall(system.lower())
    return topics(system) | {name for name, words in MENTIONS.items() if _has(system, said, words)}


def _has(text: str, said: list[str], words: tuple[frozenset[str], tuple[str, ...]]) -> bool:
    english, others = words
    return bool(english.intersection(said)) or any(w in text for w in others)


def untold(text: str, system: str) -> list[str]:
    """The topics of the caller's `text` that the tenant's `system` prompt says nothing about."""
    return sorted(topics(text) - mentioned(system))
