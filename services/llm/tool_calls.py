"""Reading a tool call out of a reply, and checking it before anything runs.

A server with a tool-call parser returns calls as `tool_calls`; the small local model often writes the
call as text instead (`{"name": ..., "arguments": ...}`, sometimes in code fences, `<tool_call>` tags or
doubled braces). Both are read here. A spoken reply never starts with `{`, a code fence or a tag, so the
stage holds back only the first characters of each reply until it can tell which one it is: speech is not
delayed beyond its first token.

Before a call runs its arguments are checked against the tool's JSON schema, and every figure in them
(an order number, a phone number) must have been said by the caller: a small model otherwise fills in
"12345" for an order nobody named.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from services.llm.knowledge.grounding import figures
from shared import tools

MARKERS = ("{", "```", "<tool", "[{")
WRAPPERS = re.compile(r"</?tool_?calls?>|</?tools>|```(?:json)?", re.IGNORECASE)


@dataclass
class Call:
    name: str
    arguments: Any
    raw: str = ""


def opens_call(prefix: str) -> bool | None:
    """True if `prefix` starts a call written as text, False if it starts speech, None while undecided."""
    head = prefix.lstrip()
    if not head:
        return None
    if any(head.startswith(m) for m in MARKERS):
        return True
    return None if any(m.startswith(head) for m in MARKERS) else False


@dataclass
class Hold:
    """Passes speech through; keeps back a reply that turns out to be a call written as text."""

    held: str = ""
    decided: bool | None = None

    def feed(self, delta: str) -> str:
        if self.decided is False:
            return delta
        self.held += delta
        if self.decided is None:
            self.decided = opens_call(self.held)
            if self.decided is False:
                out, self.held = self.held, ""
                return out
        return ""

    def flush(self) -> str:
        """At the end of the reply: what is still held, if it was not a call after all."""
        if self.decided or not self.held:
            return ""
        out, self.held = self.held, ""
        return out

    def speech(self, deltas: Iterable[str]) -> Iterator[str]:
        for delta in deltas:
            out = self.feed(delta)
            if out:
                yield out


def _load_object(body: str) -> Any:
    decoder = json.JSONDecoder()
    for tail in ("", "}", "}}", '"}}', '"}'):  # a reply cut off at max_tokens lacks its last closers
        try:
            return decoder.raw_decode(body + tail)[0]
        except json.JSONDecodeError:
            continue
    return None


def from_text(text: str) -> Call | None:
    """The call a reply wrote as text, if it is one."""
    body = WRAPPERS.sub(" ", text).strip().lstrip("[").strip()
    start = body.find("{")
    if start != 0:
        return None
    while body.startswith("{{"):
        body = body[1:]
    obj = _load_object(body)
    if not isinstance(obj, dict):
        return None
    spec = obj["function"] if isinstance(obj.get("function"), dict) else obj
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        return None
    return Call(name, _arguments(spec.get("arguments", spec.get("parameters", {}))), text)


def from_server(calls: list[dict[str, str]]) -> Call | None:
    """The first call the server parsed out of the reply."""
    for call in calls:
        if call.get("name"):
            return Call(call["name"], _arguments(call.get("arguments") or "{}"), json.dumps(call))
    return None


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            return value  # kept as written: the schema check refuses it with a reason
    return value


@dataclass
class Check:
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check(call: Call, schema: dict[str, Any], said: str, figure_fields: Iterable[str] | None = None) -> Check:
    """Schema errors, then figures in the arguments the caller never said. `figure_fields`: the argument
    names to check for figures (None: all of them)."""
    result = Check()
    if not isinstance(call.arguments, dict):
        result.errors.append(f"the arguments are not a JSON object: {str(call.arguments)[:100]!r}")
        return result
    result.errors += tools.schema_errors(schema, call.arguments)
    allowed = figures(said)
    for name, value in call.arguments.items():
        if figure_fields is not None and name not in figure_fields:
            continue
        unknown = sorted(figures(json.dumps(value, ensure_ascii=False)) - allowed)
        if unknown:
            result.errors.append(f"$.{name}: {', '.join(unknown)} was not said by the caller")
    return result
