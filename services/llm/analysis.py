"""Structured analysis of a recorded call: summary, intent, resolution, sentiment per speaker, actions, PII.

The model must answer with JSON that validates as `CallAnalysis`. Where the
server supports it the JSON schema goes along as a grammar, so the answer
cannot leave the schema; elsewhere the prompt asks for it. An answer that
does not validate is sent back with the validation error, up to
`llm_analysis_attempts` times; then the job fails with "analysis_invalid",
keeping the raw answer in the error message.

A transcript longer than `llm_analysis_max_chars` is analysed in chunks (cut
at speaker turns), and the chunk analyses are merged by one more request.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.llm.config import LlmSettings
from services.llm.engines.base import ChatEngine, Message
from services.llm.engines.openai_compat import SERVICE, OpenAICompatEngine, classify
from shared import jobs, metrics, retry
from shared.jobs import AnalysisResult, AsrResult
from shared.stage import StageContext, StageError

log = logging.getLogger(__name__)

Resolution = Literal["resolved", "unresolved", "escalated"]
Sentiment = Literal["positive", "neutral", "negative"]

RAW_KEPT_CHARS = 2000  # of a failed answer, in the job's error

SYSTEM_PROMPT = """You analyse transcripts of customer-service phone calls. Answer with one JSON object and nothing \
else, with exactly these keys:
- "summary": two or three sentences on what happened in the call.
- "intent": why the customer called, in a few words.
- "resolution": "resolved" if the customer's problem was solved in the call, "escalated" if it was handed on \
(a supervisor, another team, a callback, a ticket), otherwise "unresolved".
- "sentiment": an object giving each speaker ({speakers}) one of "positive", "neutral", "negative".
- "action_items": a list of short follow-up tasks promised or needed (empty if none).
- "pii_found": a list of the kinds of personal data spoken in the call, such as "name", "phone", "email", \
"address", "account_number", "card_number", "date_of_birth" (empty if none).
Write the text fields in the language of the call. Use only what the transcript says."""

CHUNK_NOTE = "This is part {n} of {total} of one call; analyse this part only."

MERGE_PROMPT = """These are analyses of consecutive parts of one call, in order:
{parts}
Combine them into one analysis of the whole call, with the same keys. The resolution and sentiment are those \
at the end of the call; keep every action item and kind of personal data that any part found."""

RETRY_PROMPT = "That answer is not valid: {error}\nReply again with only the corrected JSON object."


class CallAnalysis(BaseModel):
    model_config = ConfigDict(extra="forbid")

    summary: str = Field(min_length=1)
    intent: str = Field(min_length=1)
    resolution: Resolution
    sentiment: dict[str, Sentiment]
    action_items: list[str]
    pii_found: list[str]


@dataclass
class Totals:
    """What all requests of one analysis cost."""

    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    seconds: list[float] = field(default_factory=list)


class AnalysisInvalid(StageError):
    def __init__(self, error: str, raw: str, attempts: int) -> None:
        super().__init__("analysis_invalid", f"no valid analysis after {attempts} attempts: {error}; "
                                             f"last raw output: {raw[:RAW_KEPT_CHARS]}")
        self.raw = raw


def work(ctx: StageContext[Any], settings: LlmSettings, engine: ChatEngine) -> AnalysisResult:
    """The llm stage in analysis mode: the call's transcript (the asr result) in, a `CallAnalysis` out."""
    if not isinstance(engine, OpenAICompatEngine):
        raise StageError("analysis_unsupported", "call analysis needs the OpenAI-compatible engine")
    lines, speakers = transcript_lines(ctx.job.results.asr or AsrResult(), settings)
    if not lines:
        raise StageError("empty_transcript", "no speech was recognised in the audio, so there is nothing to analyse")
    start = time.monotonic()
    totals = Totals(model=engine.model)
    chunks = split(lines, settings.llm_analysis_max_chars)
    analysis = analyze(ctx, settings, engine, chunks, speakers, totals)
    metrics.inc(metrics.LLM_TOKENS, totals.prompt_tokens, kind="prompt")
    metrics.inc(metrics.LLM_TOKENS, totals.completion_tokens, kind="completion")
    jobs.add_cost(ctx.conn, ctx.job_id, prompt_tokens=totals.prompt_tokens, completion_tokens=totals.completion_tokens)
    result = AnalysisResult(
        analysis=analysis.model_dump() if analysis is not None else None,
        attempts=totals.attempts,
        chunks=len(chunks),
        model=totals.model,
        prompt_tokens=totals.prompt_tokens,
        completion_tokens=totals.completion_tokens,
        elapsed_s=round(time.monotonic() - start, 3),
    )
    if analysis is not None:
        ctx.emit("llm.analysis", result.wire())
        log.info("call analysed", extra={"job_id": ctx.job_id, "attempts": totals.attempts,
                                         "chunks": len(chunks), "elapsed_s": result.elapsed_s})
    return result


def analyze(
    ctx: StageContext[Any],
    settings: LlmSettings,
    engine: OpenAICompatEngine,
    chunks: list[str],
    speakers: list[str],
    totals: Totals,
) -> CallAnalysis | None:
    """One analysis of the whole call; None when the job was cancelled on the way."""
    system = SYSTEM_PROMPT.format(speakers=", ".join(json.dumps(s) for s in speakers))
    parts: list[CallAnalysis] = []
    for n, chunk in enumerate(chunks, 1):
        if ctx.cancelled():
            return None
        note = CHUNK_NOTE.format(n=n, total=len(chunks)) + "\n\n" if len(chunks) > 1 else ""
        parts.append(ask(settings, engine, system, f"{note}Transcript:\n{chunk}", speakers, totals))
    if len(parts) == 1:
        return parts[0]
    if ctx.cancelled():
        return None
    listed = "\n".join(part.model_dump_json() for part in parts)
    merged = ask(settings, engine, system, MERGE_PROMPT.format(parts=listed), speakers, totals)
    # Personal data spoken in any part was spoken in the call, whatever the merge kept.
    merged.pii_found = sorted({kind for part in [*parts, merged] for kind in part.pii_found})
    return merged


def ask(
    settings: LlmSettings, engine: OpenAICompatEngine, system: str, prompt: str, speakers: list[str], totals: Totals
) -> CallAnalysis:
    """Ask until the answer validates, feeding each error back; `AnalysisInvalid` once attempts run out."""
    messages: list[Message] = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    schema = json_schema(speakers)
    error, raw = "", ""
    for attempt in range(1, settings.llm_analysis_attempts + 1):
        if attempt > 1:
            messages += [{"role": "assistant", "content": raw},
                         {"role": "user", "content": RETRY_PROMPT.format(error=error)}]
        raw = complete(settings, engine, messages, schema, totals)
        try:
            return parse(raw, speakers)
        except ValueError as exc:
            error = str(exc)
            log.info("analysis answer invalid", extra={"attempt": attempt, "error": error[:300]})
    raise AnalysisInvalid(error, raw, settings.llm_analysis_attempts)


def complete(
    settings: LlmSettings, engine: OpenAICompatEngine, messages: list[Message], schema: dict[str, Any],
    totals: Totals,
) -> str:
    """One unstreamed answer (nobody listens to an analysis as it is written); upstream failures are retried."""
    options: dict[str, Any] = {}
    if settings.llm_analysis_json_mode == "schema":
        options["response_format"] = {"type": "json_object", "schema": schema}
    elif settings.llm_analysis_json_mode == "json_object":
        options["response_format"] = {"type": "json_object"}
    client = engine.client.with_options(timeout=settings.llm_analysis_timeout_s)
    outgoing = engine.outgoing(messages)  # PII redacted when the server is outside (llm_redact_pii)

    def once() -> Any:
        return client.chat.completions.create(
            model=engine.model,
            messages=cast("list[ChatCompletionMessageParam]", outgoing),
            temperature=settings.llm_analysis_temperature,
            max_tokens=settings.llm_analysis_max_tokens,
            **options,
        )

    start = time.monotonic()
    response = retry.call(once, service=SERVICE, settings=settings, classify=classify)
    totals.seconds.append(round(time.monotonic() - start, 3))
    totals.attempts += 1
    totals.model = response.model or totals.model
    if response.usage is not None:
        totals.prompt_tokens += response.usage.prompt_tokens
        totals.completion_tokens += response.usage.completion_tokens
    return str(response.choices[0].message.content or "") if response.choices else ""


def parse(raw: str, speakers: list[str]) -> CallAnalysis:
    """The answer as a `CallAnalysis`; ValueError says what is wrong, in words the model can act on."""
    text = raw.strip()
    first, last = text.find("{"), text.rfind("}")
    if first < 0:
        raise ValueError("it holds no JSON object")
    try:
        # Models like to wrap JSON in prose or ``` fences: take the outermost object.
        data = json.loads(text[first:last + 1] if last > first else text[first:])
    except json.JSONDecodeError as exc:
        raise ValueError(f"it is not valid JSON ({exc})") from None
    try:
        analysis = CallAnalysis.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'object'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"it does not match the schema ({problems})") from None
    if set(analysis.sentiment) != set(speakers):
        raise ValueError(f"sentiment must have exactly the keys {speakers}, got {sorted(analysis.sentiment)}")
    return analysis


def json_schema(speakers: list[str]) -> dict[str, Any]:
    """`CallAnalysis`'s schema with the sentiment keys spelled out, so a grammar can hold the model to them."""
    schema = CallAnalysis.model_json_schema()
    mood = {"type": "string", "enum": ["positive", "neutral", "negative"]}
    schema["properties"]["sentiment"] = {
        "type": "object",
        "properties": {speaker: mood for speaker in speakers},
        "required": speakers,
        "additionalProperties": False,
    }
    return schema


def transcript_lines(asr: AsrResult, settings: LlmSettings) -> tuple[list[str], list[str]]:
    """The transcript as "speaker: words" turns, and the speakers; plain text when no segment names one."""
    segments = [s for s in asr.segments if s.text.strip()]
    if not any(s.speaker for s in segments):
        text = asr.text.strip()
        return ([text] if text else []), list(settings.llm_analysis_mono_speakers)
    turns: list[list[str]] = []  # [speaker, words]
    for s in segments:
        speaker = s.speaker or "unknown"
        if turns and turns[-1][0] == speaker:
            turns[-1][1] += " " + s.text.strip()
        else:
            turns.append([speaker, s.text.strip()])
    speakers = list(dict.fromkeys(speaker for speaker, _ in turns))
    return [f"{speaker}: {words}" for speaker, words in turns], speakers


def weight(text: str) -> int:
    """Length for the chunk budget: a CJK character is about one token, like four latin characters."""
    return len(text) + 3 * sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af")


def split(lines: list[str], max_chars: int) -> list[str]:
    """Lines packed into chunks of at most `max_chars` (by `weight`); an overlong line is cut between words."""
    pieces = [piece for line in lines for piece in _cut(line, max_chars)]
    chunks: list[str] = []
    for piece in pieces:
        if chunks and weight(chunks[-1]) + 1 + weight(piece) <= max_chars:
            chunks[-1] += "\n" + piece
        else:
            chunks.append(piece)
    return chunks


def _cut(line: str, max_chars: int) -> list[str]:
    if weight(line) <= max_chars:
        return [line]
    speaker, sep, _ = line.partition(": ")
    prefix = f"{speaker}: " if sep and len(speaker) < 40 else ""  # each piece keeps its speaker
    room = max_chars - weight(prefix)
    step = max(1, room // 4)  # CJK has no spaces: cut runs of characters at a length that always fits
    body = line[len(prefix):].split()
    words = [word[i:i + step] for word in body for i in range(0, len(word), step)]
    out: list[str] = []
    current: list[str] = []
    used = 0
    for word in words:
        if current and used + 1 + weight(word) > room:
            out.append(prefix + " ".join(current))
            current, used = [], 0
        used += weight(word) + (1 if current else 0)
        current.append(word)
    if current:
        out.append(prefix + " ".join(current))
    return out
