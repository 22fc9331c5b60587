"""Chat replies from any OpenAI-compatible server (llama.cpp's, OpenAI, DashScope, Ollama) via the `openai` SDK.

The SDK's own retries are off (`max_retries=0`): `shared.retry` owns them.
What is retried is opening the stream *up to its first text delta*, because
until then nothing has reached the caller. A stream that breaks after text
was handed out is not retried: the text is already emitted (and perhaps
spoken), and a second sample would not continue it. That fails the stage
with "upstream_unavailable" instead.

Every message (system prompt, history, the caller's words, analysis prompts)
passes through `outgoing` on its way out, which replaces PII per
`llm_redact_pii` (by default only when the server is outside the deployment).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import openai
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from services.llm.config import LlmSettings
from services.llm.engines.base import ChatResult, Message
from shared import redact, retry
from shared.retry import Retryable, UpstreamError

log = logging.getLogger(__name__)

SERVICE = "llm"
T = TypeVar("T")
PLACEHOLDER_NOTE = ("Personal details in this conversation were replaced by placeholders such as [PHONE], [EMAIL], "
                    "[CARD] and [ID] before they reached you. Treat each as the detail it stands for, and never "
                    "write a placeholder in your answer: say \"the number you gave\" or \"your email\" instead.")


# A restarted `voicequeue llm-server` fills its slots from the saved prompt prefix within milliseconds of
# answering (services/llm/warmup.py). A request that got in first would find a cold slot and prefill the
# system prompt alone, and on a loaded machine that batch held the server, and the restores, for 15 s.
RESTART_SETTLE_S = 0.25


def classify(exc: BaseException) -> Retryable | UpstreamError | None:
    """Retry 429, 408, 5xx, timeouts and connection errors; refuse other 4xx; leave other errors alone."""
    if isinstance(exc, openai.APITimeoutError):
        return Retryable("timeout", "no answer from the LLM server in time")
    if isinstance(exc, openai.APIConnectionError):
        return Retryable("connection", "cannot reach the LLM server")
    if isinstance(exc, openai.APIStatusError):
        verdict = retry.classify_http_status(exc.status_code, exc.response.headers)
        if isinstance(verdict, UpstreamError):
            return UpstreamError(verdict.reason, f"{verdict.message}: {exc.message[:200]}")
        if isinstance(verdict, Retryable):
            return Retryable(verdict.cause, f"{verdict.detail}: {exc.message[:200]}", verdict.retry_after)
        return verdict
    if isinstance(exc, openai.APIError):
        # An error event inside an SSE stream: the server failed while answering.
        return Retryable("5xx", f"error event in stream: {exc.message[:200]}")
    return None


def restarting(exc: UpstreamError) -> bool:
    """The retries ran out because the server is gone, or it answered that it is loading its model (llama.cpp
    answers 503 "Loading model" until it has): what a crashed server being restarted looks like."""
    cause = exc.__cause__
    if isinstance(cause, openai.APIStatusError):
        return loading(cause)
    return isinstance(cause, Retryable) and (
        cause.cause == "connection" or (cause.cause == "5xx" and "loading model" in cause.detail.lower()))


def loading(exc: BaseException) -> bool:
    return isinstance(exc, openai.APIStatusError) and exc.status_code == 503 and "loading model" in exc.message.lower()


def classify_waiting(exc: BaseException) -> Retryable | UpstreamError | None:
    """`classify`, except that a server loading its model is not retried with backoff: the stage waits for it
    (`wait_until_up`), so it comes back the moment the server is ready, not up to a backoff step later."""
    if loading(exc):
        return UpstreamError("upstream_unavailable", "the LLM server is loading its model")
    return classify(exc)


def redacts(settings: LlmSettings) -> bool:
    """Whether PII is replaced in what is sent to `settings.llm_base_url`."""
    if settings.llm_redact_pii == "auto":
        return not redact.is_local_url(settings.llm_base_url)
    return settings.llm_redact_pii == "always"


def estimate_tokens(text: str) -> int:
    """Rough token count when the server reports no usage: ~4 characters a token, one per CJK character."""
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af")
    return cjk + math.ceil((len(text) - cjk) / 4)


class OpenAICompatEngine:
    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings
        self.model = settings.llm_model
        self._client: openai.OpenAI | None = None
        self._pid = 0
        self.redacts = redacts(settings)
        if self.redacts:
            log.info("PII is redacted from LLM requests", extra={"kinds": settings.llm_redact_kinds})

    def outgoing(self, messages: Sequence[Message]) -> list[Message]:
        """The messages as they may leave: PII replaced when `llm_redact_pii` says so (counted as where="llm")."""
        if not self.redacts:
            return list(messages)
        kinds = self.settings.llm_redact_kinds
        out = [Message(role=m["role"], content=redact.scrub(m["content"], kinds, where="llm")) for m in messages]
        if out and out[0]["role"] == "system" and out != list(messages):
            # Else the model reads "[PHONE]" back to the caller, or asks what it means.
            out[0] = Message(role="system", content=f"{out[0]['content']} {PLACEHOLDER_NOTE}")
        return out

    @property
    def client(self) -> openai.OpenAI:
        # One client per process: a forked job process must not share the parent's pooled sockets.
        if self._client is None or self._pid != os.getpid():
            s = self.settings
            self._client = openai.OpenAI(
                base_url=s.llm_base_url,
                api_key=s.llm_api_key.get_secret_value(),
                max_retries=0,
                timeout=openai.Timeout(s.llm_timeout_s, connect=s.llm_connect_timeout_s),
            )
            self._pid = os.getpid()
        return self._client

    def check(self) -> float:
        """Seconds to list the server's models once (no retries); raises if the server is unreachable."""
        start = time.perf_counter()
        self.client.models.list()
        return time.perf_counter() - start

    def _call(self, attempt: Callable[[], T]) -> T:
        """`attempt` with retries; while a local server restarts, again each time it is back (for up to
        `llm_restart_wait_s`)."""
        if not self.waits_for_restarts:
            return retry.call(attempt, service=SERVICE, settings=self.settings, classify=classify)
        deadline = time.monotonic() + self.settings.llm_restart_wait_s
        while True:
            try:
                return retry.call(attempt, service=SERVICE, settings=self.settings, classify=classify_waiting)
            except UpstreamError as exc:
                if not (restarting(exc) and self.wait_until_up(deadline)):
                    raise
                log.warning("LLM server is back after a restart; trying again", extra={"error": exc.message})

    @property
    def waits_for_restarts(self) -> bool:
        return self.settings.llm_restart_wait_s > 0 and redact.is_local_url(self.settings.llm_base_url)

    def wait_until_up(self, deadline: float) -> bool:
        """Poll the model list until it answers (False if `deadline` passes first), then give the server
        `RESTART_SETTLE_S`."""
        while time.monotonic() < deadline:
            try:
                self.check()
                time.sleep(RESTART_SETTLE_S)
                return True
            except openai.OpenAIError:
                time.sleep(0.5)
        return False

    def structured(self, messages: Sequence[Message], schema: dict[str, Any], max_tokens: int) -> Any:
        outgoing = self.outgoing(messages)

        def once() -> Any:
            return self.client.chat.completions.create(
                model=self.model,
                messages=cast("list[ChatCompletionMessageParam]", outgoing),
                temperature=0.0,  # a decision, not a reply: the likeliest answer
                max_tokens=max_tokens,
                response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
            )

        response = self._call(once)
        content = response.choices[0].message.content if response.choices else None
        try:
            return json.loads(content or "")
        except json.JSONDecodeError:
            log.warning("structured answer is not JSON", extra={"answer": (content or "")[:200]})
            return None

    def stream(self, messages: Sequence[Message], tools: list[dict[str, Any]] | None = None) -> OpenAIChatStream:
        messages = self.outgoing(messages)
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        start = time.monotonic()
        attempts = 0

        def open_until_first_delta() -> tuple[openai.Stream[ChatCompletionChunk], list[ChatCompletionChunk]]:
            nonlocal attempts
            attempts += 1
            raw = self.client.chat.completions.create(
                model=self.model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                stream=True,
                stream_options={"include_usage": True},
                temperature=self.settings.llm_temperature,
                max_tokens=self.settings.llm_max_tokens,
                **extra,
            )
            head: list[ChatCompletionChunk] = []
            try:
                for chunk in raw:
                    head.append(chunk)
                    if _delta(chunk):
                        break
            except BaseException:
                raw.close()
                raise
            return raw, head

        raw, head = self._call(open_until_first_delta)
        ttft = time.monotonic() - start if any(_delta(c) for c in head) else None
        prompt_estimate = sum(4 + estimate_tokens(m["content"]) for m in messages)
        return OpenAIChatStream(raw, head, self.model, ttft, attempts - 1, prompt_estimate)


class OpenAIChatStream:
    """Text deltas of one reply; `result` sums them up once iteration ends or `close()` is called."""

    def __init__(
        self,
        raw: openai.Stream[ChatCompletionChunk],
        head: list[ChatCompletionChunk],
        model: str,
        ttft_s: float | None,
        retries: int,
        prompt_estimate: int,
    ) -> None:
        self._raw = raw
        self._head = head
        self._parts: list[str] = []
        self._usage: Any = None
        self._finish: str | None = None
        self._complete = False
        self._model = model
        self._ttft_s = ttft_s
        self._retries = retries
        self._prompt_estimate = prompt_estimate
        self._calls: dict[int, dict[str, str]] = {}

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._absorb_all(self._head)
            self._head = []
            yield from self._absorb_all(self._raw)
            self._complete = True
            if self._finish is None:
                log.warning("reply stream ended without a finish reason: the server may have cut it short",
                            extra={"deltas": len(self._parts)})
        except Exception as exc:
            verdict = classify(exc)
            if verdict is None:
                raise
            raise UpstreamError(
                "upstream_unavailable" if isinstance(verdict, Retryable) else verdict.reason,
                f"{SERVICE}: reply stream broke after {len(self._parts)} deltas, not retried: {verdict}",
            ) from exc
        finally:
            self.close()

    def _absorb_all(self, chunks: Any) -> Iterator[str]:
        for chunk in chunks:
            if chunk.model:
                self._model = chunk.model
            if chunk.usage is not None:
                self._usage = chunk.usage
            for choice in chunk.choices:
                if choice.finish_reason:
                    self._finish = choice.finish_reason
                self._absorb_calls(choice.delta)
            text = _delta(chunk)
            if text:
                self._parts.append(text)
                yield text

    def _absorb_calls(self, delta: Any) -> None:
        # A call streams as pieces: the name first, then its arguments' JSON a few characters at a time.
        for piece in (delta.tool_calls or []) if delta is not None else []:
            call = self._calls.setdefault(piece.index, {"name": "", "arguments": ""})
            if piece.function is not None:
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""

    def close(self) -> None:
        self._raw.close()

    @property
    def result(self) -> ChatResult:
        text = "".join(self._parts)
        if self._usage is not None:
            prompt, completion, estimated = self._usage.prompt_tokens, self._usage.completion_tokens, False
        else:
            # Servers without stream usage (llama-cpp-python) send about one token per delta.
            prompt, completion, estimated = self._prompt_estimate, len(self._parts), True
        return ChatResult(
            text=text,
            model=self._model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            usage_estimated=estimated,
            ttft_s=self._ttft_s,
            finish_reason=self._finish or (None if self._complete else "cancelled"),
            retries=self._retries,
            tool_calls=[self._calls[i] for i in sorted(self._calls)],
        )


def _delta(chunk: ChatCompletionChunk) -> str:
    return "".join(c.delta.content or "" for c in chunk.choices if c.delta is not None)
