"""PII redaction: phone numbers, emails, payment cards and ID numbers become `[PHONE]`, `[EMAIL]`, `[CARD]`, `[ID]`.

Runs on text before it leaves for an outside LLM and on every log record.
Numbers are judged by their shape, and by a checksum where one exists, so
prices, dates, times, quantities and order numbers stay:

- phone: Chinese mobiles (1[3-9] + 9 digits, with or without +86/0086, spaces
  or dashes); numbers with a `+` country code, or `00` and a separator after
  the country code (8-15 digits, E.164); national numbers with a trunk 0
  (`020 7946 0958`, `010-12345678`, `(021) 6123 4567`: 9-12 digits in groups,
  10-12 as one run); North American `(415) 555-0100`, `415-555-0100`,
  `415.555.0100`, `415 555 0100`; and any 7-15 digit number just after a word
  like "phone", "tel", "mobile", "电话", "手机" (not a date). A bare 7-digit
  local number ("555-0100") is left alone.
- email: `local@domain.tld` (ASCII).
- card: 13-19 digits starting 2-6 (Visa, Mastercard, Amex, UnionPay, JCB,
  Discover...), single spaces or dashes between digits, that pass the Luhn
  check. An order number of that length fails Luhn nine times out of ten.
- id: Chinese resident ID numbers (18 characters: region, a real birth date,
  sequence, ISO 7064 MOD 11-2 check character, possibly `X`); US social
  security numbers written `123-45-6789`; and, just after a word naming a
  personal identifier ("ID", "passport", "account", "SSN", "licence", "member
  number", "身份证", "证件", "护照", "账号", "卡号"...), a token holding at
  least 6 digits, unless the word follows "order", "invoice", "tracking",
  "ticket", "订单"... A long digit run with no such word and no valid
  checksum is left alone: it is as likely an order, invoice or tracking
  number, which the caller needs the LLM to see.

A number inside a longer run of letters or digits is never matched (hex ids,
tokens), nor one group of a longer grouped number.

Full-width digits (０-９) and Chinese digit characters (〇一二三...九 and 幺,
as ASR writes spoken numbers) are read as digits, so "手机一三八一二三四五六七八"
is caught. Spoken English digits ("one three eight...") are out of scope.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Literal
from urllib.parse import urlsplit

from shared import metrics

Kind = Literal["phone", "email", "card", "id"]
KINDS: tuple[Kind, ...] = ("phone", "email", "card", "id")
PLACEHOLDERS: dict[str, str] = {"phone": "[PHONE]", "email": "[EMAIL]", "card": "[CARD]", "id": "[ID]"}

# One character for one character, so a match in the probe is a match at the same place in the text.
_DIGITS = str.maketrans({
    **{chr(0xFF10 + i): str(i) for i in range(10)},  # full-width ０-９
    **dict(zip("〇零一二三四五六七八九", "00123456789", strict=True)),
    "幺": "1",  # "yao": how 1 is spoken in Chinese phone numbers
    "＋": "+", "－": "-", "　": " ", "（": "(", "）": ")", "＠": "@", "．": ".",
})

# Not inside a longer run of letters or digits (CJK characters around a number are fine).
_B = r"(?<![0-9A-Za-z])"
_E = r"(?![0-9A-Za-z])"
# Nor one group of a longer grouped number ("6222 0212 3456 7890" holds no phone number "0212 3456 7890").
_GB = r"(?<!\d[ .\-])"
_GE = r"(?![ .\-]\d)"
_SEP = r"[ \-]"

_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![A-Za-z])")
_CN_ID = re.compile(_B + r"[1-9]\d{5} ?(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]) ?\d{3}[0-9Xx]" + _E)
_CARD = re.compile(_B + r"[2-6]\d{3}(?:" + _SEP + r"?\d){9,15}" + _E)
_SSN = re.compile(_B + r"(?!000|666|9)\d{3}-(?!00)\d{2}-(?!0000)\d{4}" + _E)
_CN_MOBILE = re.compile(_GB + r"(?<![0-9A-Za-z+])(?:(?:\+|00) ?86[ \-]?)?1[3-9]\d(?:" + _SEP + r"?\d){8}" + _E)
_INTL = re.compile(r"(?<![0-9A-Za-z+])(?:\+[1-9]\d{0,2}|00[1-9]\d{0,2}(?=[ .\-(]))"
                   r"(?:[ .\-]?\(\d{1,4}\)|[ .\-]?\d{1,5}){1,6}" + _E)
_TRUNK = re.compile(_GB + _B + r"(?:\(0\d{1,4}\)|0\d{1,4})[ .\-]?\d{3,4}[ .\-]?\d{3,5}" + _E + _GE)
_NANP = re.compile(_GB + r"(?<![0-9A-Za-z(])(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[.\-])[2-9]\d{2}[.\-]\d{4}" + _E
                   + r"|" + _GB + _B + r"[2-9]\d{2} [2-9]\d{2} \d{4}" + _E + _GE)
_PHONE_WORDS = (r"\b(?:phone|telephone|tel\.?|mobile|cell(?:phone)?|fax|whatsapp|call me (?:on|at)|"
                r"reach me (?:on|at))|电话|手机号?码?|联系方式|座机|传真")
_ID_WORDS = (r"\b(?:ids?|identity|identification|passport|account|acct|ssn|social security|licen[cs]e|"
             r"member(?:ship)? (?:number|no)|customer (?:number|no)|policy (?:number|no))\b|"
             r"身份证号?码?|证件号?码?|护照号?码?|账号|帐号|账户|帐户|卡号|社保号?|驾驶证号?|驾照号?|会员号")
_NOT_DECIMAL = r"(?![.,]\d)"
_PHONE_CONTEXT = re.compile(r"(?i)(?:" + _PHONE_WORDS + r")[^0-9.!?。！？\n]{0,16}?(" + _B
                            + r"\+?\(?\d[\d ().\-]{5,22}\d" + _E + _NOT_DECIMAL + ")")
_ID_CONTEXT = re.compile(r"(?i)(?:" + _ID_WORDS + r")[^0-9.!?。！？\n]{0,20}?(" + _B
                         + r"(?:[A-Za-z]{0,3}\d{6,}[0-9A-Za-z]*|\d{3,}(?:[ \-]\d{3,})+)" + _E + _NOT_DECIMAL + ")")
# Words that make the number after "ID"/"number" something the caller needs kept: "order ID 2024061512345".
_NOT_PERSONAL = re.compile(r"(?i)(?:order|invoice|tracking|transaction|ticket|reference|booking|parcel|"
                           r"shipment|订单|快递|运单|发票|工单)\W{0,3}$")
_DATE = re.compile(r"\d{4}[./\-]\d{1,2}[./\-]\d{1,2}|\d{1,2}[./\-]\d{1,2}[./\-]\d{2,4}")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def cn_id_valid(number: str) -> bool:
    """An 18-character resident ID: a real birth date and the ISO 7064 MOD 11-2 check character."""
    number = number.replace(" ", "").upper()
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    check = "10X98765432"[sum(int(d) * w for d, w in zip(number, _ID_WEIGHTS, strict=False)) % 11]
    return number[17] == check


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


Accept = Callable[[re.Match[str], str], bool]


def _any(m: re.Match[str], probe: str) -> bool:
    return True


def _count(lo: int, hi: int, group: int = 0) -> Accept:
    return lambda m, probe: lo <= len(_digits(m.group(group))) <= hi


def _card(m: re.Match[str], probe: str) -> bool:
    digits = _digits(m.group())
    return 13 <= len(digits) <= 19 and luhn(digits)


def _cn_id(m: re.Match[str], probe: str) -> bool:
    return cn_id_valid(m.group())


def _trunk(m: re.Match[str], probe: str) -> bool:
    # Written in groups it is a phone number from 9 digits; as one run, from 10 (fewer: a code, an amount).
    n = len(_digits(m.group()))
    return (9 if m.group() != _digits(m.group()) else 10) <= n <= 12


def _context(lo: int, hi: int) -> Accept:
    """A number after a keyword: the right length, not a date, not an order/ticket/... number."""
    def accept(m: re.Match[str], probe: str) -> bool:
        number = m.group(1)
        return (lo <= len(_digits(number)) <= hi and not _DATE.fullmatch(number.strip())
                and not _NOT_PERSONAL.search(probe[max(0, m.start() - 16):m.start()]))
    return accept


@dataclass(frozen=True)
class _Rule:
    kind: Kind
    pattern: re.Pattern[str]
    accept: Accept = _any
    group: int = 0


# In order: the strongest evidence first (a checksum, a country code), so e.g. a resident ID is not
# half-eaten as a phone number and a "+86 ..." mobile is not taken for a card.
RULES: tuple[_Rule, ...] = (
    _Rule("email", _EMAIL),
    _Rule("id", _CN_ID, _cn_id),
    _Rule("phone", _CN_MOBILE),
    _Rule("phone", _INTL, _count(8, 15)),
    _Rule("card", _CARD, _card),
    _Rule("id", _SSN),
    _Rule("phone", _TRUNK, _trunk),
    _Rule("phone", _NANP),
    _Rule("id", _ID_CONTEXT, _context(6, 40), group=1),
    _Rule("phone", _PHONE_CONTEXT, _context(7, 15), group=1),
)


@dataclass
class Redaction:
    text: str
    counts: Tally[str] = field(default_factory=Tally)

    @property
    def found(self) -> bool:
        return bool(self.counts)


def redact(text: str, kinds: Iterable[str] = KINDS) -> Redaction:
    """`text` with every PII match of `kinds` replaced by its placeholder, and how many of each were found."""
    wanted = set(kinds)
    out = Redaction(text)
    if not text or not wanted:
        return out
    probe = text.translate(_DIGITS)
    if "@" not in probe and sum(ch.isdigit() for ch in probe) < 6:
        return out  # the common case for log lines and chat messages: too few digits for any kind
    for rule in RULES:
        if rule.kind not in wanted:
            continue
        spans = [m.span(rule.group) for m in rule.pattern.finditer(probe) if rule.accept(m, probe)]
        for start, end in reversed(spans):
            mark = PLACEHOLDERS[rule.kind]
            probe = probe[:start] + mark + probe[end:]
            out.text = out.text[:start] + mark + out.text[end:]
            out.counts[rule.kind] += 1
    return out


def scrub(text: str, kinds: Iterable[str] = KINDS, *, where: str) -> str:
    """`redact`, counted in `voicequeue_pii_redactions_total{kind, where}`."""
    result = redact(text, kinds)
    for kind, n in result.counts.items():
        metrics.inc(metrics.PII_REDACTIONS, n, kind=kind, where=where)
    return result.text


LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".svc", ".cluster.local", ".lan", ".home.arpa")


def is_local_url(url: str) -> bool:
    """Whether a server URL stays on this machine or the operator's own network.

    Local: loopback, private and link-local addresses, `localhost`, single-label names (compose and
    Kubernetes service names such as `llm-server`) and names under .local, .internal, .svc, .lan,
    .home.arpa. Anything else is an outside service: text sent there leaves the deployment.
    """
    host = (urlsplit(url if "//" in url else f"//{url}").hostname or "").rstrip(".").lower()
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or "." not in host or host.endswith(LOCAL_SUFFIXES)
    return address.is_loopback or address.is_private or address.is_link_local
