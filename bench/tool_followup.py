"""Where a tool's outcome goes in the follow-up prompt: after the question (today) or in the system prompt
(before 2026-12-01), on the bundled model and `voicequeue llm-server`, in the same run.

A live call has a history. The slot first holds the previous turn's request, as it does on a call; then the
follow-up asks for the spoken answer from the tool's outcome. Printed per case and layout: tokens the server
had to prefill (its `timings.prompt_n`, exact), the prefill time, and the answer, with whether it states
the tool's data (every expected word found). Both layouts pin slot 0 (`id_slot`), so both start from the
same cache; the stack itself lets llama-server pick the slot whose prompt is most alike.
Usage: `.venv/bin/python bench/tool_followup.py`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.llm import actions  # noqa: E402
from services.llm.config import LlmSettings  # noqa: E402
from tests.llm.conftest import warm_server  # noqa: E402
from tests.llm.helpers import API_KEY  # noqa: E402

Message = dict[str, str]
HISTORY: list[Message] = [
    {"role": "user", "content": "Hi, I ordered a lamp from you last week."},
    {"role": "assistant",
     "content": "Thanks for calling. I can help with your lamp order. What would you like to know?"},
    {"role": "user", "content": "I paid for express delivery, and I was told it would come on Monday."},
    {"role": "assistant", "content": "I understand. Let me help you check on that delivery."},
]
# (question, the note the worker writes, what the answer must contain to have used it)
CASES: list[tuple[str, str, list[str]]] = [
    ("Where is my order 12345?", actions.result_note(
        "lookup_order", {"order_id": "12345", "status": "shipped", "carrier": "DHL", "eta": "Friday 4 December"}),
     ["friday"]),
    ("Can you check order 88812 please?", actions.result_note(
        "lookup_order", {"order_id": "88812", "status": "delayed", "reason": "address check", "eta": None}),
     ["delay", "address"]),
    ("Where is my order?", "The lookup_order action needs details the caller has not given (the order id). Do "
     "not make them up and do not mention any action: ask the caller for what is missing, or answer in plain "
     "words.", ["order", "?"]),  # it asks for the number
]


def chat(base_url: str, messages: list[Message], max_tokens: int) -> dict[str, Any]:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "id_slot": 0, "cache_prompt": True}
    r = httpx.post(f"{base_url}/chat/completions", json=body, timeout=300,
                   headers={"Authorization": f"Bearer {API_KEY}"})
    r.raise_for_status()
    return dict(r.json())


def layouts(system: str, question: str, note: str) -> dict[str, list[Message]]:
    asked = [{"role": "system", "content": system}, *HISTORY, {"role": "user", "content": question}]
    return {"note after the question": [*asked, {"role": "system", "content": note}],
            "note in the system prompt (old)": [{"role": "system", "content": f"{system}\n\n{note}"}, *asked[1:]]}


def main() -> None:
    settings = LlmSettings()
    system = settings.llm_system_prompt
    rows: dict[str, list[tuple[int, float, bool]]] = {}
    with tempfile.TemporaryDirectory() as tmp, warm_server(Path(tmp) / "server.log") as base_url:
        for question, note, expected in CASES:
            for name, follow_up in layouts(system, question, note).items():
                chat(base_url, [{"role": "system", "content": system}, *HISTORY[:3]], 16)  # the previous turn
                answer = chat(base_url, follow_up, settings.llm_max_tokens)
                text = answer["choices"][0]["message"]["content"]
                used = all(word in text.lower() for word in expected)
                timings = answer["timings"]
                rows.setdefault(name, []).append((timings["prompt_n"], timings["prompt_ms"] / 1000, used))
                print(f"{name:32s} {question!r}: prefilled {timings['prompt_n']} tokens in "
                      f"{timings['prompt_ms'] / 1000:.2f} s; uses the data: {used}; {text!r}", flush=True)
    print()
    for name, got in rows.items():
        print(f"{name:32s} median prefill {statistics.median(n for n, _, _ in got):.0f} tokens, "
              f"{statistics.median(s for _, s, _ in got):.2f} s; answers from the data {sum(u for *_, u in got)}"
              f"/{len(got)}")


if __name__ == "__main__":
    main()
