"""Mandarin number, time, date, price, phone and percentage readings for the Chinese voice."""

from __future__ import annotations

import pytest

from services.tts.zh_normalize import integer, normalize, yuan


@pytest.mark.parametrize(("n", "said"), [
    (0, "零"), (2, "二"), (10, "十"), (15, "十五"), (20, "二十"), (105, "一百零五"), (110, "一百一十"),
    (1005, "一千零五"), (1050, "一千零五十"), (10000, "一万"), (10005, "一万零五"), (12000, "一万二千"),
    (100000, "十万"), (20000000, "二千万"), (100010001, "一亿零一万零一"),
    (123456789, "一亿二千三百四十五万六千七百八十九"),
])
def test_integers(n: int, said: str) -> None:
    assert integer(n) == said


@pytest.mark.parametrize(("amount", "said"), [
    ("25.50", "二十五元五角"), ("25.5", "二十五元五角"), ("25.05", "二十五元零五分"), ("25.55", "二十五元五角五分"),
    ("0.5", "五角"), ("0.05", "五分"), ("2", "两元"), ("100", "一百元"), ("0", "零元"),
])
def test_renminbi(amount: str, said: str) -> None:
    assert yuan(amount) == said


@pytest.mark.parametrize(("text", "said"), [
    # Times: the hour with 点, minutes only when there are any, 2 as 两, ranges with 到.
    ("明天9:00送达", "明天九点送达"),
    ("下午2:30", "下午两点三十分"),
    ("上午10:05到", "上午十点零五分到"),
    ("营业时间9:00-18:00", "营业时间九点到十八点"),
    ("营业时间9：00至21：30", "营业时间九点到二十一点三十分"),
    # Prices.
    ("运费¥25.50", "运费二十五元五角"),
    ("共￥1,299元", "共一千二百九十九元"),
    ("共25.05元", "共二十五元零五分"),
    ("只要8块钱", "只要八元"),
    ("$19.99", "十九点九九美元"),
    # Dates: years digit by digit.
    ("2024-03-05到货", "二零二四年三月五日到货"),
    ("2024/12/31", "二零二四年十二月三十一日"),
    ("2024年3月5日", "二零二四年三月五日"),
    ("3月15号", "三月十五号"),
    ("2025年", "二零二五年"),
    # Phone numbers and codes, digit by digit (1 as 幺 on the phone).
    ("请拨打13800138000", "请拨打幺三八零零幺三八零零零"),
    ("客服热线400-123-4567", "客服热线四零零幺二三四五六七"),
    ("+86 138 0013 8000", "幺三八零零幺三八零零零"),
    ("010-12345678", "零幺零幺二三四五六七八"),
    ("订单号20241105", "订单号二零二四一一零五"),
    ("验证码0427", "验证码零四二七"),
    # Percentages, decimals, counts.
    ("优惠15%", "优惠百分之十五"),
    ("利率3.5%", "利率百分之三点五"),
    ("0.75", "零点七五"),
    ("2个包裹", "两个包裹"),
    ("共12件", "共十二件"),
    ("第1名", "第一名"),
    ("等待3分钟", "等待三分钟"),
    ("3-5个工作日", "三到五个工作日"),
    ("10~20元", "十到二十元"),
    ("没有数字。", "没有数字。"),
])
def test_readings(text: str, said: str) -> None:
    assert normalize(text) == said


def test_only_digits_change() -> None:
    text = "您好！您的订单（编号A12）已发货，预计2天后到。"
    said = normalize(text)
    assert said == "您好！您的订单（编号A一二）已发货，预计两天后到。"
    assert not any(ch.isdigit() for ch in said)
