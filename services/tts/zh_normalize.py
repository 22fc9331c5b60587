"""Mandarin text → what a Chinese voice should say: numbers, times, dates, prices, phone numbers, percentages.

The phonemizer reads every digit string as one number ("9:00" comes out as
nine, a colon, zero; a phone number as billions), so replies are rewritten in
characters first, the way a customer-service agent reads them aloud:
"9:00" → 九点, "¥25.50" → 二十五元五角, "2024-03-05" → 二零二四年三月五日,
"13800138000" → 幺三八零零幺三八零零零 (digit by digit, 1 as 幺 as on the phone),
"15%" → 百分之十五, "2个" → 两个.
"""

from __future__ import annotations

import re
from collections.abc import Callable

DIGITS = "零一二三四五六七八九"
PHONE_DIGITS = "零幺二三四五六七八九"  # 幺: "one" said so it cannot be heard as 七
SMALL_UNITS = ("", "十", "百", "千")
BIG_UNITS = ("", "万", "亿", "万亿")
# Measure words after which 2 is said 两 ("两个", not "二个").
MEASURES = "个位次天周年件张台只份种条小分秒名家本瓶杯块元点间套"


def _section(n: int) -> str:
    """0 < n < 10000 in characters, with a 零 for each gap (一千零五)."""
    out, gap = "", False
    for power in (3, 2, 1, 0):
        digit = n // 10**power % 10
        if digit == 0:
            gap = bool(out)
            continue
        if gap:
            out += "零"
            gap = False
        out += DIGITS[digit] + SMALL_UNITS[power]
    return out


def integer(n: int) -> str:
    """An integer read as a number: 25 → 二十五, 10 → 十, 1005 → 一千零五, 20000 → 两万 is not used (二万)."""
    if n == 0:
        return "零"
    if n < 0:
        return "负" + integer(-n)
    sections = []
    while n:
        sections.append(n % 10000)
        n //= 10000
    out = ""
    for i in range(len(sections) - 1, -1, -1):
        value = sections[i]
        if value == 0:
            continue
        lower = sections[i + 1] if i + 1 < len(sections) else None
        if out and (value < 1000 or lower == 0):
            out += "零"
        out += _section(value) + BIG_UNITS[i]
    out = out.replace("零零", "零")
    return out[1:] if out.startswith("一十") else out  # 十五, not 一十五 (but 一百一十五 stays)


def digits(text: str, phone: bool = False) -> str:
    table = PHONE_DIGITS if phone else DIGITS
    return "".join(table[int(c)] for c in text if c.isdigit())


def decimal(text: str) -> str:
    """"3.14" → 三点一四; "25" → 二十五."""
    whole, _, fraction = text.partition(".")
    out = integer(int(whole or "0"))
    return out + "点" + digits(fraction) if fraction else out


def _two(n: int, reading: str) -> str:
    return "两" if n == 2 else reading


def time_of_day(hours: str, minutes: str, seconds: str | None = None) -> str:
    h, m = int(hours), int(minutes)
    out = _two(h, integer(h)) + "点"
    if m:
        out += ("零" if m < 10 else "") + integer(m) + "分"
    if seconds and int(seconds):
        out += integer(int(seconds)) + "秒"
    return out


def yuan(amount: str) -> str:
    """Renminbi the way it is said: 25.50 → 二十五元五角, 25.05 → 二十五元零五分, 0.5 → 五角."""
    whole, _, fraction = amount.partition(".")
    fraction = (fraction + "00")[:2]
    w, jiao, fen = int(whole or "0"), int(fraction[0]), int(fraction[1])
    out = _two(w, integer(w)) + "元" if w else ""
    if jiao:
        out += DIGITS[jiao] + "角"
    elif fen and w:
        out += "零"
    if fen:
        out += DIGITS[fen] + "分"
    return out or "零元"


def date(year: str | None, month: str, day: str | None, day_word: str = "日") -> str:
    out = digits(year) + "年" if year else ""
    out += integer(int(month)) + "月"
    return out + (integer(int(day)) + day_word if day else "")


_TIME = r"(\d{1,2})[:：](\d{2})(?:[:：](\d{2}))?"
Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _time(m: re.Match[str], at: int = 1) -> str:
    return time_of_day(m.group(at), m.group(at + 1), m.group(at + 2))


RULES: list[Rule] = [
    # Thousands separators go first, so "1,200元" is a price like any other.
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), lambda m: ""),
    # Phone numbers, digit by digit: mobiles (+86 138 0013 8000), 400/800 lines, landlines with an area code.
    (re.compile(r"(?:\+?86[- ]?)?(?<!\d)1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?!\d)"
                r"|(?<!\d)[48]00[- ]?\d{3}[- ]?\d{4}(?!\d)|(?<!\d)0\d{2,3}-\d{7,8}(?!\d)"),
     lambda m: digits(re.sub(r"^\+?86[- ]?", "", m.group()), phone=True)),
    # Time ranges, then times: 9:00-18:00 → 九点到十八点.
    (re.compile(_TIME + r"\s*[-~～至到]\s*" + _TIME), lambda m: _time(m) + "到" + _time(m, 4)),
    (re.compile(_TIME), _time),
    # Dates: 2024年3月5日, 2024-03-05, 2024/3/5, 3月5日 / 3月5号, 2024年.
    (re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)"), lambda m: date(m[1], m[2], m[3])),
    (re.compile(r"(?<!\d)(\d{4})年(?:(\d{1,2})月(?:(\d{1,2})([日号]))?)?"),
     lambda m: date(m[1], m[2], m[3], m[4] or "日") if m[2] else digits(m[1]) + "年"),
    (re.compile(r"(?<!\d)(\d{1,2})月(?:(\d{1,2})([日号]))?"), lambda m: date(None, m[1], m[2], m[3] or "日")),
    # Ranges: 3-5个工作日 → 3到5个工作日 (the numbers are read by the rules below).
    (re.compile(r"(?<![\d.:-])(\d{1,4})\s*[-~～]\s*(\d{1,4})(?![\d.:-])"), lambda m: f"{m[1]}到{m[2]}"),
    # Money: ¥25.50, 25.50元, 25块 → yuan; $ → 美元 read as a decimal.
    (re.compile(r"[¥￥]\s*(\d+(?:\.\d{1,2})?)(?:\s*元)?"), lambda m: yuan(m[1])),
    (re.compile(r"(\d+(?:\.\d{1,2})?)\s*(?:元|块钱|块)"), lambda m: yuan(m[1])),
    (re.compile(r"(?:US)?\$\s*(\d+(?:\.\d+)?)"), lambda m: decimal(m[1]) + "美元"),
    (re.compile(r"(\d+(?:\.\d+)?)\s*[%％]"), lambda m: "百分之" + decimal(m[1])),
    # Codes (order, account and ticket numbers, A12), and anything with a leading zero, digit by digit.
    (re.compile(r"(?<![\d.])(?:0\d+|\d{7,})(?![\d.])|(?<=[A-Za-z])\d+|\d+(?=[A-Za-z])"),
     lambda m: digits(m.group())),
    (re.compile(r"(\d+\.\d+)"), lambda m: decimal(m[1])),
    (re.compile(r"(\d+)(?=\s*[" + MEASURES + "])"), lambda m: _two(int(m[1]), integer(int(m[1])))),
    (re.compile(r"\d+"), lambda m: integer(int(m.group()))),
]


def normalize(text: str) -> str:
    """`text` with every number written out as Mandarin speaks it; other characters untouched."""
    for pattern, read in RULES:
        text = pattern.sub(read, text)
    return text
