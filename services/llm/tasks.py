"""The llm stage: stream a spoken-style reply to the caller's words, emitting text deltas as events."""

from __future__ import annotations

import logging
from typing import Any

from services.llm import prompts
from services.llm.config import LlmSettings
from services.llm.engines.base import ChatEngine
from services.llm.engines.openai_compat import OpenAICompatEngine
from shared import metrics, stage
from shared.stage import StageContext, StageError

log = logging.getLogger(__name__)

# Set once by `setup()` (the worker calls it in the parent before forking).
SETTINGS: LlmSettings | None = None
ENGINE: ChatEngine | None = None


def setup(settings: LlmSettings | None = None, engine: ChatEngine | None = None) -> ChatEngine:
    global SETTINGS, ENGINE
    SETTINGS = settings or LlmSettings()
    ENGINE = engine or OpenAICompatEngine(SETTINGS)
    return ENGINE


def run(job_id: str) -> None:
    """rq entry point."""
    if SETTINGS is None:
        setup()
    assert SETTINGS is not None
    stage.run("llm", job_id, stage.job_connection(), SETTINGS, work)


def work(ctx: StageContext) -> dict[str, Any]:
    if ENGINE is None or SETTINGS is None:
        raise RuntimeError("services.llm.tasks.setup() was not called")
    job = ctx.job
    text = user_text(job)
    language = caller_language(job)
    messages = prompts.build(
        text,
        system=SETTINGS.llm_system_prompt,
        language=language,
        history=job["options"].get("history"),
        turns=SETTINGS.llm_history_turns,
    )
    reply = ENGINE.stream(messages)
    for index, delta in enumerate(reply):
        ctx.emit("llm.delta", {"text": delta, "index": index})
        if ctx.cancelled():
            reply.close()
            break
    result = reply.result
    metrics.inc(metrics.LLM_TOKENS, result.prompt_tokens, kind="prompt")
    metrics.inc(metrics.LLM_TOKENS, result.completion_tokens, kind="completion")
    if result.ttft_s is not None:
        metrics.observe(metrics.LLM_TTFT, result.ttft_s)
    extra: dict[str, Any] = {"job_id": ctx.job_id, "completion_tokens": result.completion_tokens,
                             "ttft_s": result.ttft_s, "finish_reason": result.finish_reason,
                             "retries": result.retries}
    if SETTINGS.debug:
        extra["reply"] = result.text
    log.info("reply streamed", extra=extra)
    return {**result.to_dict(), "language": language}


def user_text(job: dict[str, Any]) -> str:
    """The transcript when the plan ran ASR first, else the text the caller sent."""
    if "asr" in job["plan"]:
        text = str((job["results"].get("asr") or {}).get("text") or "").strip()
        if not text:
            raise StageError("empty_transcript", "no speech was recognised in the audio, so there is nothing to answer")
        return text
    text = str(job["inputs"].get("text") or "").strip()
    if not text:
        raise StageError("empty_text", "the request has no text to answer")
    return text


def caller_language(job: dict[str, Any]) -> str | None:
    """The language the caller asked for, else the one ASR detected."""
    asked = job["options"].get("language")
    detected = (job["results"].get("asr") or {}).get("language")
    return str(asked or detected) if (asked or detected) else None
