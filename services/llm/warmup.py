"""Warm a fresh llama-server: every slot's system-prompt prefix, and the JSON-schema path of call analysis.

A slot prefills the ~170-token system prompt itself the first time it serves a
caller: on 2 cores four cold slots made every first reply wait ~7 s, against
~0.5 s warm (docs/benchmarks.md). So once the model has loaded, each slot gets
one request with the system prompt (`id_slot` pins it), and the server's
prompt cache keeps the prefix: every chat request starts with it, and
`--cache-ram` saves a slot's prompt before another (an analysis) replaces it.
Then the action router's prompts, so the first caller whose words suggest an
action (a complaint, a goodbye) does not wait for them to be prefilled, and
the analysis path (schema turned into a grammar) once, so the first real
analysis does not pay for its set-up either.

Warming is for callers, so it gives way to them. A server restarted after a
crash has callers waiting (the llm workers retry as soon as it answers), and a
warm-up request batched beside theirs took 43 s on a loaded machine and pushed
the cut-off reply out past a minute. So the prompts are prefilled in pieces of
`CHUNK_TOKENS` tokens (each request extends the cached prefix of the last), a
piece starts only when the server has nothing else to do (`/metrics`: no
request processing or deferred), and one in progress is cancelled, by dropping
its connection, as soon as another request arrives. A prefill batch cannot be
interrupted: whole, a 118-token prompt held a caller back 5.9 s on a loaded
machine; a piece holds one back a fraction of that.

With `--slot-save-path`, the chat prefix is prefilled into one slot only,
saved to a file (named by the model, the server build and the prefix's
tokens), and restored into the other slots, which takes milliseconds. A
restarted server finds the file and restores every slot at once, without
waiting for the callers: after a crash the cut-off replies came back to four
cold slots and prefilled the prompt four times over, which on a loaded machine
held them up ~25 s (tests/reliability/test_up_supervision.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.llm import actions, analysis, guided
from services.llm.config import LlmSettings
from services.llm.knowledge import grounding

log = logging.getLogger(__name__)

SAMPLE_TRANSCRIPT = "agent: Hello, how can I help you?\ncustomer: My order has not arrived yet."
POLL_S = 0.25
# How long the server must stay idle before a piece (re)starts: callers waiting on a restarted server are
# back within a second, and a busy server is seldom idle this long between requests.
QUIET_S = 2.0
# Tokens prefilled per warm-up request: a fifth of the 118-token prefix that, whole, held a caller back 5.9 s
# on the loaded machine.
CHUNK_TOKENS = 24
MARK = "\u2063warm-up\u2063"  # where the user's words go; text no chat template contains

Step = Callable[[httpx.AsyncClient], Coroutine[Any, Any, None]]


def base_url(settings: LlmSettings) -> str:
    host = settings.llm_server_host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: reach it on loopback
        host = "127.0.0.1"
    return f"http://{host}:{settings.llm_server_port}"


@dataclass(frozen=True)
class SavedPrefixes:
    """Slot prefixes llama-server saved in `directory` (its `--slot-save-path`), one file per prompt (the
    messages and tools a prefix is made of). `server` names the model and the build: a file saved by another
    cannot be restored into this one. Named by the prompt, not its tokens, so that a restarted server's
    slots can be filled before anything else reaches it, without asking it to tokenize first."""

    directory: Path
    server: str

    def name(self, prompt: Any) -> str:
        digest = hashlib.sha256(json.dumps([self.server, prompt], sort_keys=True).encode()).hexdigest()
        return f"prefix-{digest[:32]}.bin"

    def has(self, prompt: Any) -> bool:
        return (self.directory / self.name(prompt)).is_file()

    def forget(self, prompt: Any) -> None:
        (self.directory / self.name(prompt)).unlink(missing_ok=True)


def run(settings: LlmSettings, slots: int, proc: subprocess.Popen[bytes] | None = None,
        saved: SavedPrefixes | None = None, timeout_s: float = 600.0) -> dict[str, float]:
    """Wait for the model to load, then warm; the seconds each part took (logged). Never raises: a server
    that does not come up is the supervisor's business."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per /health poll
    url = base_url(settings)
    headers = {"Authorization": f"Bearer {settings.llm_api_key.get_secret_value()}"}
    chat = chat_prompt(settings)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout_s) as client:
            if not wait_ready(client, proc, timeout_s):
                return {}
            start = time.monotonic()
            filled = saved is not None and saved.has(chat) and restore_now(client, saved.name(chat), slots)
            early = {f"slot{n}_s": round(time.monotonic() - start, 3) for n in range(slots)} if filled else {}
        if filled:
            log.info("slots filled from the saved prefix", extra={"slots": list(range(slots)),
                                                                  "seconds": early["slot0_s"]})
        took = asyncio.run(_warm(url, headers, settings, slots, saved, timeout_s, early))
    except (httpx.HTTPError, TimeoutError, KeyError, ValueError) as exc:  # a server build without an endpoint
        log.warning("warm-up failed", extra={"error": repr(exc)})
        return {}
    log.info("llm server warm", extra={"slots": slots, **took})
    return took


def restore_now(client: httpx.Client, name: str, slots: int) -> bool:
    """Every slot from the saved prefix `name`, all at once, the moment the model has loaded: a caller's
    request that got in first would prefill its slot cold, and the restores would wait behind that batch."""
    def one(slot: int) -> bool:
        r = client.post(f"/slots/{slot}", params={"action": "restore"}, json={"filename": name})
        return r.status_code == 200 and r.json().get("n_restored", 0) > 0
    with ThreadPoolExecutor(slots) as pool:
        return all(pool.map(one, range(slots)))


async def _warm(url: str, headers: dict[str, str], settings: LlmSettings, slots: int,
                saved: SavedPrefixes | None, timeout_s: float, early: dict[str, float]) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s) as client:
        warmer = Warmer(client, time.monotonic() + timeout_s, saved)
        chat = chat_prompt(settings)
        tokens = await prefix_tokens(client, *chat)
        if early:
            warmer.took.update(early, restored=slots)
        else:
            await warmer.fill(chat, tokens, range(slots))
        # On the last slot: the router's prompts (a caller waits for those), the analysis prompt and its grammar
        # once; then that slot's chat prefix again.
        for n, system in enumerate(router_prompts(settings)):
            prefix = await prefix_tokens(client, [{"role": "system", "content": system}])
            await warmer.prefill(f"router{n}", prefix, slots - 1)
        start = time.monotonic()
        await warmer.prefill("analysis_prefix", await prefix_tokens(client, analysis_messages(settings)), slots - 1)
        await warmer.when_idle(grammar_step(settings, slots - 1))
        warmer.took["grammar_s"] = round(time.monotonic() - start, 3)
        # A restore overwrites the slot without keeping what it held in the server's RAM cache, as a request
        # on another prompt does (measured: the analysis prompt was left cold, 241 of 245 tokens prefilled
        # on a fresh server): one such request first.
        await warmer.when_idle(completion_step(tokens[:CHUNK_TOKENS], slots - 1))
        await warmer.fill(chat, tokens, [slots - 1], "_again")
    return warmer.took


class Warmer:
    """Runs warm-up requests only while the server has no one else to serve."""

    def __init__(self, client: httpx.AsyncClient, deadline: float, saved: SavedPrefixes | None = None) -> None:
        self.client, self.deadline, self.saved = client, deadline, saved
        self.took: dict[str, float] = {"yields": 0, "restored": 0}
        # When a request not ours was last seen; callers of a restarted server come back within a second.
        self.others_seen_at = time.monotonic()

    async def fill(self, prompt: Any, tokens: list[int], slots: Sequence[int], suffix: str = "") -> None:
        """The prefix `tokens` of `prompt` into `slots`: restored from its saved copy (saved from the first slot
        if there is none yet), or else prefilled in each."""
        rest = list(slots)
        if self.saved is not None and rest and not self.saved.has(prompt):
            await self.prefill(f"slot{rest[0]}{suffix}", tokens, rest[0])
            if await self.save(prompt, tokens, rest[0]):
                rest = rest[1:]
        start = time.monotonic()
        if self.saved is not None and self.saved.has(prompt):
            if await self.restore(self.saved.name(prompt), tokens, rest):
                took = round(time.monotonic() - start, 3)
                for slot in rest:
                    self.took[f"slot{slot}{suffix}_s"] = took
                self.took["restored"] += len(rest)
                log.info("slots filled from the saved prefix", extra={"slots": rest, "seconds": took})
                return
            log.warning("saved prefix could not be restored; prefilling", extra={"file": self.saved.name(prompt)})
            self.saved.forget(prompt)
        for slot in rest:
            await self.prefill(f"slot{slot}{suffix}", tokens, slot)

    async def save(self, prompt: Any, tokens: list[int], slot: int) -> bool:
        """Save `slot` if it holds exactly `tokens`. A caller may have taken the slot since its prefill (the
        server gives a request the slot with the longest matching prefix); the save then waits for the reply
        and finds more tokens, and the file, which holds the caller's words, is deleted unused."""
        assert self.saved is not None
        name = self.saved.name(prompt)
        part = f"{name}.{os.getpid()}.part"
        r = await self.client.post(f"/slots/{slot}", params={"action": "save"}, json={"filename": part})
        path = self.saved.directory / part
        if r.status_code == 200 and r.json().get("n_saved") == len(tokens):
            path.replace(self.saved.directory / name)  # whole or absent, for a server starting beside us
            return True
        path.unlink(missing_ok=True)
        log.info("slot not saved", extra={"status": r.status_code, "answer": r.text[:200]})
        return False

    async def restore(self, name: str, tokens: list[int], slots: Sequence[int]) -> bool:
        """Every slot in `slots` from the saved prefix, at once: milliseconds each, so it need not wait for an
        idle server (a busy slot takes it when its reply is done)."""
        answers = await asyncio.gather(*(self.client.post(f"/slots/{slot}", params={"action": "restore"},
                                                          json={"filename": name}) for slot in slots))
        return all(r.status_code == 200 and r.json().get("n_restored") == len(tokens) for r in answers)

    async def prefill(self, name: str, tokens: list[int], slot: int) -> None:
        """`tokens` into `slot`, a piece at a time."""
        start = time.monotonic()
        for end in range(min(CHUNK_TOKENS, len(tokens)), len(tokens) + CHUNK_TOKENS, CHUNK_TOKENS):
            await self.when_idle(completion_step(tokens[:end], slot))
        self.took[f"{name}_s"] = round(time.monotonic() - start, 3)

    async def when_idle(self, step: Step) -> None:
        """Run `step` to its end, starting it again whenever a caller's request made it give way."""
        while not await self.yielding(step):
            self.took["yields"] += 1

    async def yielding(self, step: Step) -> bool:
        """Run `step` once the server is idle; False if it was cancelled because a request came in."""
        await self.until_idle()
        task = asyncio.create_task(step(self.client))
        while not task.done():
            await asyncio.wait({task}, timeout=POLL_S)
            if not task.done() and await busy(self.client) > 1:  # ours, and someone else's
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                self.others_seen_at = time.monotonic()
                return False
        task.result()
        return True

    async def until_idle(self) -> None:
        """Until nothing but the warm-up has run for `QUIET_S` (between its own pieces it need not wait)."""
        while True:
            if await busy(self.client):
                self.others_seen_at = time.monotonic()
            elif time.monotonic() - self.others_seen_at >= QUIET_S:
                return
            if time.monotonic() > self.deadline:
                raise TimeoutError("the server was never idle long enough to warm up")
            await asyncio.sleep(POLL_S)


async def busy(client: httpx.AsyncClient) -> int:
    """Requests the server is working on or holding back."""
    r = await client.get("/metrics", timeout=30)
    r.raise_for_status()
    return in_flight(r.text)


def in_flight(metrics: str) -> int:
    """Requests processing plus deferred, from llama-server's /metrics text."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(("llamacpp:requests_processing", "llamacpp:requests_deferred")):
            total += float(line.split()[-1])
    return int(total)


def wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> bool:
    """True once /health answers 200 (model loaded); False if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if client.get("/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        # Often: the restores should reach the slots before the callers a restart cut off (they poll at 0.5 s).
        time.sleep(0.02)
    return False


def chat_messages(settings: LlmSettings) -> list[dict[str, str]]:
    """The system prompt as the stage sends it (services.llm.tasks.answer_from_llm): native tool use adds the
    actions' instructions, a tenant with a knowledge base the grounding instructions. A tenant without one
    shares the prefix up to the end of the configured prompt, so both are warm."""
    system = settings.llm_system_prompt
    if settings.llm_tools and settings.llm_tool_mode == "native":
        system = f"{system}\n\n{actions.INSTRUCTIONS}"
    if settings.knowledge_enabled:
        system = grounding.with_instructions(system)
    return [{"role": "system", "content": system}]


def chat_tools(settings: LlmSettings) -> list[dict[str, Any]] | None:
    """The built-in tools: the template writes them into the system turn, so they are part of the prefix."""
    return actions.specs([]) if settings.llm_tools and settings.llm_tool_mode == "native" else None


def chat_prompt(settings: LlmSettings) -> tuple[list[dict[str, str]], list[dict[str, Any]] | None]:
    """What the chat prefix is made of: the system message and the tools."""
    return chat_messages(settings), chat_tools(settings)


def router_prompts(settings: LlmSettings) -> list[str]:
    """The action router's system prompts (services.llm.guided): a caller's words that suggest an action
    wait for its decision before the reply starts, and a cold prompt made the first one 1.7-3.2 s instead of
    ~1.0 (bench/llm_server.py --only-router)."""
    if not (settings.llm_tools and settings.llm_tool_mode == "guided"):
        return []
    return [guided.router_prompt(names) for names in guided.builtin_picks()]


def analysis_messages(settings: LlmSettings) -> list[dict[str, str]]:
    speakers = settings.llm_analysis_mono_speakers
    return [{"role": "system",
             "content": analysis.SYSTEM_PROMPT.format(speakers=", ".join(json.dumps(s) for s in speakers))}]


async def prefix_tokens(client: httpx.AsyncClient, messages: list[dict[str, str]],
                        tools: list[dict[str, Any]] | None = None) -> list[int]:
    """The tokens every request with these leading messages starts with: the chat template applied, cut where
    the next user message's own words would begin (the model's template, as the server applies it)."""
    body: dict[str, Any] = {"messages": [*messages, {"role": "user", "content": MARK}]}
    if tools:
        body["tools"] = tools
    r = await client.post("/apply-template", json=body)
    r.raise_for_status()
    prompt = str(r.json()["prompt"])
    r = await client.post("/tokenize", json={"content": prompt[:prompt.index(MARK)]})
    r.raise_for_status()
    return [int(t) for t in r.json()["tokens"]]


def completion_step(tokens: list[int], slot: int) -> Step:
    """Prefill `tokens` into `slot` (only what the slot does not hold yet is computed)."""
    body = {"prompt": tokens, "n_predict": 1, "id_slot": slot, "cache_prompt": True, "temperature": 0.0}

    async def step(client: httpx.AsyncClient) -> None:
        (await client.post("/completion", json=body)).raise_for_status()
    return step


def grammar_step(settings: LlmSettings, slot: int) -> Step:
    """One call analysis as `services.llm.analysis` asks it, schema and all, on a tiny transcript."""
    speakers = settings.llm_analysis_mono_speakers
    messages = [*analysis_messages(settings), {"role": "user", "content": f"Transcript:\n{SAMPLE_TRANSCRIPT}"}]
    body = {"model": settings.llm_model, "messages": messages, "temperature": 0.0, "cache_prompt": True,
            "max_tokens": 16, "id_slot": slot,
            "response_format": {"type": "json_object", "schema": analysis.json_schema(speakers)}}

    async def step(client: httpx.AsyncClient) -> None:
        (await client.post("/v1/chat/completions", json=body)).raise_for_status()
    return step
