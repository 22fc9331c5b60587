"""Tool use for small local models: the worker asks the model for its decision, constrained to valid JSON.

Measured with the bundled Qwen2.5-Coder-1.5B and the product's system prompt, tools passed with the reply
were almost never called: the model said "Transfer to human." or told the caller to "use the
transfer_to_human function" instead. Asked on its own, with the answer constrained by a JSON schema to the
action names, it chose right on every built-in request tried (English and Chinese), and never for small
talk. So in `guided` mode (the default; `native` passes the tools with the reply, for models trained on
tool calls):

1. `candidates`: a cheap word check says which actions the caller's words could be about (a person, a
   goodbye, a fault; a custom tool sharing a content word with its name or description). Most turns
   name none, and go straight to the reply: no added latency. A question that only mentions a fault ("Do you
   repair faulty headphones?") names none: it is answered.
2. `choose`: otherwise one short constrained request picks one of those actions, or none.
3. `fill`: the chosen action's arguments, constrained by its JSON schema. The usual checks then apply
   (`tool_calls.check`: a figure the caller never said is refused).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from services.llm import actions
from services.llm.engines.base import ChatEngine, Message
from services.llm.knowledge import lexical
from services.llm.tool_calls import Call
from shared import tools

ASK = r"\b(speak|talk|transfer|connect|put me through|get me|want|need|give me)\b"
TRIGGERS = {
    # A word that means a person at the business on its own, or a person named after asking for one: "someone"
    # alone is in too many ordinary sentences ("someone took my parcel").
    actions.TRANSFER: re.compile(
        rf"\b(human|agent|operator|representative)\b|{ASK}.*\b(person|someone|somebody|colleague|manager|"
        r"supervisor)\b|人工|转接|真人|客服|经理|主管|接线员", re.IGNORECASE),
    actions.END_CALL: re.compile(
        r"\b(bye|goodbye|hang up|that'?s all|that is all|nothing else)\b|再见|拜拜|挂了|没有了|没别的", re.IGNORECASE),
    actions.TICKET: re.compile(
        r"\b(ticket|complain\w*|broken|damaged|fault\w*|defect\w*|not working|doesn'?t work|stopped working|"
        r"follow[- ]up|call me back)\b|工单|投诉|坏了|损坏|报修|故障|不能用|回电", re.IGNORECASE),
}
# A question that names a fault, a ticket or a complaint asks about it ("Can I return a defective toaster?",
# "What does a ticket cost?"): it is answered, not turned into a ticket. Asked, the 1.5B model opened a ticket
# for 5 of 8 such questions, with the prompt saying questions are none, and for 8 of 8 reports.
QUESTION = re.compile(
    r"^(what|how|when|where|why|which|who|whose|is|are|was|were|do|does|did|can|could|will|would|should|may)\b"
    r"|^请问|[吗呢][？?]?$|怎么|如何|是否|能否|多少", re.IGNORECASE)
# Unless it asks for one in so many words ("Can you open a ticket?", "Could someone call me back?").
ASKS_FOR_TICKET = re.compile(
    r"\b(open|make|file|raise|log|create|lodge|submit|put in)\b.{0,24}\b(ticket|complaint)s?\b|call me back|"
    r"\bi(?: would|'d| want to)?\s*(?:like to )?(complain|report)\b|(开|提交|建).{0,4}工单|投诉|回电", re.IGNORECASE)
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")
NONE = "none"
ROUTER = (
    "You decide whether a customer-service phone call needs an action now. Read the caller's last words and "
    "answer with the one action they ask for, or none. A caller who asks to speak to a person (a human, an "
    "agent, a manager) wants transfer_to_human, also when they describe a problem too.\nActions:\n{actions}\n"
    "- none: anything else: a question (opening hours, prices, delivery, returns, policies, whether you are "
    "a person), small talk, or thanks."
)
FILL = (
    "Fill in the arguments of the {name} action ({description}) from the conversation. Use only details the "
    "caller gave; leave out optional details they did not give."
)


def candidates(text: str, custom: Sequence[tools.Tool]) -> list[str]:
    """The actions the caller's words may be about, in offer order."""
    found = [name for name, pattern in TRIGGERS.items() if pattern.search(text)]
    if actions.TICKET in found and only_asks_about_a_fault(text):
        found.remove(actions.TICKET)
    said = set(lexical.terms(text))
    for tool in custom:
        # A word of the tool's name ("order" of lookup_order), or two of its description: one common word
        # ("number") would send every question about numbers to the model for a decision.
        named = set(lexical.terms(tool.name.replace("_", " ").replace("-", " ")))
        if said & named or len(said & set(lexical.terms(tool.description))) >= 2:
            found.append(tool.name)
    return found


def only_asks_about_a_fault(text: str) -> bool:
    """Every sentence with a ticket's words in it is a question, and none asks for a ticket."""
    named = [part for part in SENTENCE_END.split(text.strip()) if TRIGGERS[actions.TICKET].search(part)]
    return bool(named) and all(QUESTION.search(part.strip()) for part in named) and not ASKS_FOR_TICKET.search(text)


def describe(name: str, custom: Sequence[tools.Tool]) -> tuple[str, dict[str, Any]]:
    """(description, parameters schema) of a built-in or custom action."""
    if name in actions.BUILTIN:
        return actions.BUILTIN[name]["description"], actions.BUILTIN[name]["parameters"]
    tool = next(t for t in custom if t.name == name)
    return tool.description, tool.parameters


def _conversation(text: str, history: Sequence[Message]) -> list[Message]:
    return [*history[-2:], {"role": "user", "content": text}]


def choose(engine: ChatEngine, text: str, history: Sequence[Message], names: list[str],
           custom: Sequence[tools.Tool]) -> str | None:
    """The action the model picks among `names`, or None.

    A caller who asks for a person and also describes a fault ("my blender is broken, I want to speak to
    someone") should reach a person, but offered both, the 1.5B model mostly opened a ticket. Asked about
    the transfer alone first, it answered right, so that question comes first."""
    if actions.TRANSFER in names and len(names) > 1:
        if _pick(engine, text, history, [actions.TRANSFER], custom) == actions.TRANSFER:
            return actions.TRANSFER
        names = [n for n in names if n != actions.TRANSFER]
    return _pick(engine, text, history, names, custom)


def _pick(engine: ChatEngine, text: str, history: Sequence[Message], names: list[str],
          custom: Sequence[tools.Tool]) -> str | None:
    messages: list[Message] = [{"role": "system", "content": router_prompt(names, custom)},
                               *_conversation(text, history)]
    value = engine.structured(messages, decision_schema(names), max_tokens=24)
    chosen = value.get("action") if isinstance(value, dict) else None
    return chosen if isinstance(chosen, str) and chosen in names else None


def router_prompt(names: Sequence[str], custom: Sequence[tools.Tool] = ()) -> str:
    """The system message of a decision among `names`."""
    return ROUTER.format(actions="\n".join(f"- {n}: {describe(n, custom)[0]}" for n in names))


def decision_schema(names: Sequence[str]) -> dict[str, Any]:
    return {"type": "object", "properties": {"action": {"enum": [*names, NONE]}}, "required": ["action"]}


def builtin_picks() -> list[list[str]]:
    """Every list of built-in actions `choose` can ask the model about, in the order it asks them: the
    router's prompts a server can hold ready (services.llm.warmup), since each names its own actions."""
    order = list(TRIGGERS)
    asked: list[list[str]] = []
    for mask in range(1, 2 ** len(order)):
        names = [n for i, n in enumerate(order) if mask >> i & 1]
        lists = [[actions.TRANSFER], [n for n in names if n != actions.TRANSFER]] \
            if actions.TRANSFER in names and len(names) > 1 else [names]
        asked += [picked for picked in lists if picked not in asked]
    return asked


def needs_arguments(name: str, custom: Sequence[tools.Tool]) -> bool:
    """Whether `fill` asks the model. A built-in whose arguments are all optional (a transfer's reason) does
    not: the caller is not kept waiting for a detail nobody needs."""
    schema = describe(name, custom)[1]
    return bool(schema.get("properties")) and not (name in actions.BUILTIN and not schema.get("required"))


def fill(engine: ChatEngine, name: str, text: str, history: Sequence[Message],
         custom: Sequence[tools.Tool]) -> Call:
    """The model's arguments for `name` (none asked for when it `needs_arguments` none)."""
    description, schema = describe(name, custom)
    if not needs_arguments(name, custom):
        return Call(name, {})
    messages: list[Message] = [{"role": "system", "content": FILL.format(name=name, description=description)},
                               *_conversation(text, history)]
    value = engine.structured(messages, schema, max_tokens=200)
    return Call(name, value if value is not None else "(no valid JSON)")
