"""The llm stage: stream a spoken-style reply to the caller's words.

Text deltas go out as events; each finished sentence goes straight to the tts
queue, so the first audio is ready long before the reply is. A session's
history shapes the reply; context-free questions are answered from the cache.
"""

from __future__ import annotations

import logging
from typing import Any

from services.llm import analysis, embeddings, prompts
from services.llm.config import LlmSettings
from services.llm.embeddings import MiniLM
from services.llm.engines.base import ChatEngine, ChatResult
from services.llm.engines.openai_compat import OpenAICompatEngine
from shared import answer_cache, jobs, metrics, queues, sessions, stage
from shared.sentences import SentenceSplitter
from shared.stage import StageContext, StageError

log = logging.getLogger(__name__)

# Set once by `setup()` (the worker calls it in the parent before forking).
SETTINGS: LlmSettings | None = None
ENGINE: ChatEngine | None = None
EMBEDDER: MiniLM | None = None  # matches paraphrases of FAQ questions; None: exact (normalised) matches only


def setup(
    settings: LlmSettings | None = None, engine: ChatEngine | None = None, embedder: MiniLM | None = None
) -> ChatEngine:
    global SETTINGS, ENGINE, EMBEDDER
    SETTINGS = settings or LlmSettings()
    ENGINE = engine or OpenAICompatEngine(SETTINGS)
    EMBEDDER = embedder
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
    if ctx.job["options"].get("analysis"):
        return analysis.work(ctx, SETTINGS, ENGINE)  # a recorded call: structured analysis, no spoken reply
    job = ctx.job
    text = user_text(job)
    language = caller_language(job)
    session_id = job["options"].get("session_id")
    history = (sessions.history(ctx.conn, session_id, SETTINGS.session_max_turns, tenant=job["tenant"])
               if session_id else job["options"].get("history") or [])
    cache_key = None
    if SETTINGS.llm_answer_cache and not history:
        # Only context-free turns: with history the same words can mean something else.
        cache_key = answer_cache.key_for(text, system_prompt=SETTINGS.llm_system_prompt, model=ENGINE.model,
                                         language=language)
    cached = answer_cache.get(ctx.conn, cache_key) if cache_key else None
    match: dict[str, Any] = {"cache_match": "exact"} if cached is not None else {}
    if cache_key and cached is None and EMBEDDER is not None and embeddings.usable_for(language):
        found = faq_paraphrase(ctx, SETTINGS, EMBEDDER, text, language)
        if found is not None:
            cached, match = found[0], {"cache_match": "paraphrase", "cache_similarity": round(found[1], 4)}
    chunks = Chunks(ctx, SETTINGS)
    deltas = Deltas(ctx, chunks)
    if cached is not None:
        result = {**answer_from_cache(ctx, cached, deltas), **match}
    else:
        if cache_key:
            metrics.inc(metrics.CACHE_MISSES, cache="answer")
        result = answer_from_llm(ctx, SETTINGS, ENGINE, text, language, history, deltas)
    result["text"] = deltas.text  # on a re-run, the words listeners already got stand
    if result["finish_reason"] == "cancelled":
        return result  # the job is gone or cancelled: stage.run stores nothing
    chunks.finish()
    if session_id:
        sessions.append_turn(ctx.conn, session_id, text, result["text"], max_turns=SETTINGS.session_max_turns,
                             ttl_s=SETTINGS.session_ttl_s, tenant=job["tenant"])
    if cache_key and cached is None and result["finish_reason"] == "stop" and result["text"].strip():
        answer_cache.put(ctx.conn, cache_key, result["text"], SETTINGS.llm_answer_cache_ttl_s)
    ctx.emit_once("llm.done", {"text": result["text"], "chunks": len(chunks.texts)})
    return {**result, "language": language, "chunks": chunks.listed(),
            "cache": "off" if cache_key is None else "hit" if cached is not None else "miss",
            "history_turns": len(history) // 2}


class Chunks:
    """The reply cut into sentences; each one goes to `tts:<priority>` as soon as it is complete.

    When the plan speaks no reply, or the caller asked for no streaming, the
    chunks are only listed: the tts stage speaks them after the llm is done.
    """

    def __init__(self, ctx: StageContext, settings: LlmSettings) -> None:
        self.ctx = ctx
        self.splitter = SentenceSplitter(first_comma_chars=settings.llm_stream_first_comma_chars,
                                         min_chars=settings.llm_stream_min_chars)
        self.texts: list[str] = []
        self.enqueue = "tts" in ctx.job["plan"] and ctx.job["options"].get("stream") is not False

    def feed(self, delta: str) -> None:
        self._add(self.splitter.feed(delta))

    def finish(self) -> None:
        self._add(self.splitter.flush())

    def _add(self, sentences: list[str]) -> None:
        for sentence in sentences:
            seq = len(self.texts)
            self.texts.append(sentence)
            if self.enqueue and not self.ctx.cancelled():
                queues.enqueue_chunk(self.ctx.conn, self.ctx.settings, self.ctx.job_id, seq, sentence,
                                     self.ctx.job["priority"])

    def listed(self) -> list[dict[str, Any]]:
        return [{"seq": seq, "text": text} for seq, text in enumerate(self.texts)]


class Deltas:
    """The reply's text as listeners get it: `llm.delta` events, numbered, each fed to the sentence cutter.

    On a re-run (the worker died mid-reply) the text earlier attempts sent stands: it is fed to the
    cutter again (its sentences are enqueued already, so nothing is enqueued twice), the first that
    many characters of the new reply are dropped, and numbering goes on from the last delta sent.
    At temperature 0 the new reply repeats the old one; otherwise the seam may show, but the text,
    the events and the spoken sentences still agree.
    """

    def __init__(self, ctx: StageContext, chunks: Chunks) -> None:
        self.ctx = ctx
        self.chunks = chunks
        earlier = ctx.earlier("llm.delta")
        self.text = "".join(str(d.get("text") or "") for d in earlier)
        self.index = len(earlier)
        self.skip = len(self.text)
        if self.text:
            chunks.feed(self.text)

    def add(self, delta: str) -> str:
        """Send `delta` (less what an earlier attempt already sent); returns what was sent."""
        if self.skip:
            dropped = min(self.skip, len(delta))
            delta, self.skip = delta[dropped:], self.skip - dropped
        if delta:
            self.ctx.emit("llm.delta", {"text": delta, "index": self.index})
            self.index += 1
            self.text += delta
        return delta


def faq_paraphrase(
    ctx: StageContext, settings: LlmSettings, embedder: MiniLM, text: str, language: str | None
) -> tuple[str, float] | None:
    """The FAQ answer whose question means the same as `text`, if one is close enough."""
    assert ENGINE is not None
    index = answer_cache.index_for(system_prompt=settings.llm_system_prompt, model=ENGINE.model, language=language)
    if not ctx.conn.exists(index):
        return None  # no FAQ loaded: spare the embedding
    return answer_cache.nearest(ctx.conn, index, embedder.encode(text), settings.llm_faq_paraphrase_threshold)


def answer_from_cache(ctx: StageContext, answer: str, deltas: Deltas) -> dict[str, Any]:
    """A cached answer: no LLM call; the text goes out as one delta and all its chunks at once."""
    assert ENGINE is not None
    metrics.inc(metrics.CACHE_HITS, cache="answer")
    jobs.add_cost(ctx.conn, ctx.job_id, cache_hits=1, prompt_tokens=0, completion_tokens=0)
    deltas.chunks.feed(deltas.add(answer))
    log.info("reply from the answer cache", extra={"job_id": ctx.job_id})
    return ChatResult(text=answer, model=ENGINE.model, prompt_tokens=0, completion_tokens=0,
                      usage_estimated=False, ttft_s=None, finish_reason="stop", retries=0).to_dict()


def answer_from_llm(
    ctx: StageContext,
    settings: LlmSettings,
    engine: ChatEngine,
    text: str,
    language: str | None,
    history: list[Any],
    deltas: Deltas,
) -> dict[str, Any]:
    messages = prompts.build(text, system=settings.llm_system_prompt, language=language, history=history,
                             turns=settings.session_max_turns)
    reply = engine.stream(messages)
    for delta in reply:
        sent = deltas.add(delta)
        if ctx.cancelled():
            reply.close()
            break
        deltas.chunks.feed(sent)
    result = reply.result
    metrics.inc(metrics.LLM_TOKENS, result.prompt_tokens, kind="prompt")
    metrics.inc(metrics.LLM_TOKENS, result.completion_tokens, kind="completion")
    if result.ttft_s is not None:
        metrics.observe(metrics.LLM_TTFT, result.ttft_s)
    jobs.add_cost(ctx.conn, ctx.job_id, prompt_tokens=result.prompt_tokens,
                  completion_tokens=result.completion_tokens)
    extra: dict[str, Any] = {"job_id": ctx.job_id, "completion_tokens": result.completion_tokens,
                             "ttft_s": result.ttft_s, "finish_reason": result.finish_reason,
                             "retries": result.retries}
    if settings.debug:
        extra["reply"] = result.text
    log.info("reply streamed", extra=extra)
    return result.to_dict()


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
