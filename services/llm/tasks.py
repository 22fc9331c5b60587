"""The llm stage: stream a spoken-style reply to the caller's words.

Text deltas go out as events; each finished sentence goes straight to the tts
queue, so the first audio is ready long before the reply is. A session's
history shapes the reply; context-free questions are answered from the cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import openai

from services.llm import actions, analysis, embeddings, guided, prompts, tool_calls
from services.llm.config import LlmSettings
from services.llm.embeddings import MiniLM
from services.llm.engines.base import ChatEngine, ChatResult, ChatStream, Message
from services.llm.engines.openai_compat import OpenAICompatEngine
from services.llm.knowledge import grounding, index, lexical, topics
from services.llm.knowledge.retrieve import Library
from shared import answer_cache, jobs, metrics, queues, sessions, tools
from shared.jobs import AnalysisResult, Job, LlmResult, Sentence
from shared.sentences import SentenceSplitter, is_cjk
from shared.stage import StageContext, StageError

log = logging.getLogger(__name__)


@dataclass
class Resources:
    """What the llm worker makes once: the chat engine, the sentence embedder (FAQ paraphrases and the
    knowledge base; None when its package is missing) and the tenants' knowledge indexes."""

    settings: LlmSettings
    engine: ChatEngine
    embedder: MiniLM | None
    load_seconds: dict[str, float]
    library: Library | None = None


def load(settings: LlmSettings) -> Resources:
    """Make the engine once; a quick model listing shows the server answers (not fatal: it may start later).

    The client is per process, so each forked job process opens its own connections.
    """
    engine = OpenAICompatEngine(settings)
    start = time.perf_counter()
    embedder = embeddings.load(settings.llm_faq_paraphrase or settings.knowledge_enabled, settings.llm_embed_threads)
    seconds = {"all-minilm-l6-v2": time.perf_counter() - start} if embedder else {}
    library = None
    if settings.knowledge_enabled:
        lexical.prepare(background=not settings.worker_fork)
        library = Library(embedder.encode if embedder else None, settings.knowledge_cached_tenants)
    try:
        seconds[settings.llm_model] = engine.check()
    except openai.OpenAIError as exc:
        log.warning("LLM server not answering yet", extra={"base_url": settings.llm_base_url,
                                                          "error": type(exc).__name__})
    return Resources(settings, engine, embedder, seconds, library)


def work(ctx: StageContext[Resources]) -> LlmResult | AnalysisResult:
    settings, engine, embedder = ctx.resources.settings, ctx.resources.engine, ctx.resources.embedder
    if ctx.job.options.analysis:
        return analysis.work(ctx, settings, engine)  # a recorded call: structured analysis, no spoken reply
    job = ctx.job
    text = user_text(job)
    language = caller_language(job)
    session_id = job.options.session_id
    history = (sessions.history(ctx.conn, session_id, settings.session_max_turns, tenant=job.tenant)
               if session_id else job.options.history or [])
    system = system_for(job, settings)
    library = ctx.resources.library
    kb_index = library.index(ctx.conn, job.tenant) if library is not None else None
    kb_active = kb_index is not None and len(kb_index) > 0
    cache_key = None
    if settings.llm_answer_cache and not history:
        # Only context-free turns: with history the same words can mean something else. With a knowledge
        # base, answers are kept per version of it, so an edited or deleted document answers at once.
        version = f"\n[knowledge v{kb_index.version}]" if kb_index is not None and kb_active else ""
        cache_key = answer_cache.key_for(text, system_prompt=system + version, model=engine.model,
                                         language=language, tenant=job.tenant)
    hit = answer_cache.lookup(ctx.conn, cache_key, faq_index(ctx, language, system)) if cache_key else None
    checked = not kb_active and settings.knowledge_guard_without_documents
    cached = None if hit is None else replayable(ctx, hit, system, text) if checked else hit.answer
    match: dict[str, Any] = {"cache_match": "exact"} if cached is not None else {}
    if (cache_key and cached is None and embedder is not None and settings.llm_faq_paraphrase
            and embeddings.usable_for(language)):
        found = faq_paraphrase(ctx, embedder, text, language, system)
        if found is not None:
            cached, match = found[0], {"cache_match": "paraphrase", "cache_similarity": round(found[1], 4)}
    chunks = Chunks(ctx, settings)
    deltas = Deltas(ctx, chunks)
    grounded = None
    acting = None
    if cached is not None:
        reply = answer_from_cache(ctx, cached, deltas)
    else:
        if cache_key:
            metrics.inc(metrics.CACHE_MISSES, cache="answer")
        custom = tenant_tools(ctx)
        if kb_active and library is not None:
            grounded = grounding.ground(ctx.conn, library, job.tenant, text, language, history, grounding.Limits(
                settings.knowledge_top_k, settings.knowledge_relevance_min, settings.knowledge_coverage_min,
                settings.knowledge_near_best),
                system)
        elif settings.knowledge_guard_without_documents:
            grounded = grounding.without_documents(system, text, language, history, described(custom))
        acting = offer_actions(ctx, text, language, history, custom)
        if grounded is not None and grounded.reply is not None and acting is None:
            reply = answer_fixed(ctx, grounded.reply, deltas)  # nothing relevant: nothing to make up from
        else:
            reply = answer_from_llm(ctx, text, language, history, deltas, system, grounded, acting)
    result = LlmResult.model_validate({**{k: v for k, v in reply.to_dict().items() if k != "tool_calls"}, **match})
    if grounded is not None:
        result.knowledge = grounded.use
    if acting is not None:
        result.tool_calls, result.action = acting.records, acting.action
        if acting.decision is not None:
            result.tool_decision = acting.decision  # which actions the words could mean, and the model's pick
    result.text = deltas.text  # on a re-run, the words listeners already got stand
    if result.finish_reason == "cancelled":
        return result  # the job is gone or cancelled: stage.run stores nothing
    chunks.finish()
    if session_id:
        sessions.append_turn(ctx.conn, session_id, text, result.text, max_turns=settings.session_max_turns,
                             ttl_s=settings.session_ttl_s, tenant=job.tenant)
    # A reply the figure guard cut or replaced is not kept: asked again, the model may answer right. Nor is
    # the don't-know line said without the model: it costs nothing to say again, and it goes stale with the
    # setting or the prompt.
    unkept = grounded is not None and (grounded.use.outcome in ("guarded", "contradicted")
                                       or grounded.reply is not None)
    if cache_key and cached is None and result.finish_reason == "stop" and result.text.strip() and \
            not result.tool_calls and not unkept:
        answer_cache.put(ctx.conn, cache_key, result.text, settings.llm_answer_cache_ttl_s, by=answer_cache.MODEL)
    ctx.emit_once("llm.done", {"text": result.text, "chunks": len(chunks.texts)})
    result.language, result.chunks = language, chunks.listed()
    result.cache = "off" if cache_key is None else "hit" if cached is not None else "miss"
    result.history_turns = len(history) // 2
    return result


class Chunks:
    """The reply cut into sentences; each one goes to `tts:<priority>` as soon as it is complete.

    When the plan speaks no reply, or the caller asked for no streaming, the
    chunks are only listed: the tts stage speaks them after the llm is done.
    """

    def __init__(self, ctx: StageContext[Resources], settings: LlmSettings) -> None:
        self.ctx = ctx
        self.splitter = SentenceSplitter(first_comma_chars=settings.llm_stream_first_comma_chars,
                                         min_chars=settings.llm_stream_min_chars)
        self.texts: list[str] = []
        self.enqueue = "tts" in ctx.job.plan and ctx.job.options.stream is not False

    def feed(self, delta: str) -> None:
        self._add(self.splitter.feed(delta))

    def finish(self) -> None:
        self._add(self.splitter.flush())

    def cut(self) -> None:
        """Send what is pending now, as a sentence of its own (a filler said while a tool is awaited)."""
        self._add(self.splitter.flush())

    def _add(self, sentences: list[str]) -> None:
        for sentence in sentences:
            seq = len(self.texts)
            self.texts.append(sentence)
            if self.enqueue and not self.ctx.cancelled():
                queues.enqueue_chunk(self.ctx.conn, self.ctx.settings, self.ctx.job_id, seq, sentence,
                                     self.ctx.job.priority)

    def listed(self) -> list[Sentence]:
        return [Sentence(seq=seq, text=text) for seq, text in enumerate(self.texts)]


class Deltas:
    """The reply's text as listeners get it: `llm.delta` events, numbered, each fed to the sentence cutter.

    On a re-run (the worker died mid-reply) the text earlier attempts sent stands: it is fed to the
    cutter again (its sentences are enqueued already, so nothing is enqueued twice), the first that
    many characters of the new reply are dropped, and numbering goes on from the last delta sent.
    At temperature 0 the new reply repeats the old one; otherwise the seam may show, but the text,
    the events and the spoken sentences still agree.
    """

    def __init__(self, ctx: StageContext[Resources], chunks: Chunks) -> None:
        self.ctx = ctx
        self.chunks = chunks
        earlier = ctx.earlier("llm.delta")
        self.text = "".join(str(d.get("text") or "") for d in earlier)
        self.index = len(earlier)
        self.skip = len(self.text)
        self.spaced = False
        if self.text:
            chunks.feed(self.text)

    def separate(self) -> None:
        """What is added next is a new reply after a line already said ("One moment…"): keep a space
        between them in the text (Chinese needs none)."""
        last = self.text.rstrip()[-1:] if self.text.strip() else ""
        self.spaced = bool(last) and self.text == self.text.rstrip() and not is_cjk(last) and last not in "。！？，"

    def add(self, delta: str) -> str:
        """Send `delta` (less what an earlier attempt already sent); returns what was sent."""
        if self.spaced and delta and not self.skip:
            delta = delta if delta[0].isspace() else f" {delta}"
            self.spaced = False
        if self.skip:
            dropped = min(self.skip, len(delta))
            delta, self.skip = delta[dropped:], self.skip - dropped
        if delta:
            self.ctx.emit("llm.delta", {"text": delta, "index": self.index})
            self.index += 1
            self.text += delta
        return delta


def faq_index(ctx: StageContext[Resources], language: str | None, system: str) -> str:
    return answer_cache.index_for(system_prompt=system, model=ctx.resources.engine.model, language=language,
                                  tenant=ctx.job.tenant)


def faq_paraphrase(
    ctx: StageContext[Resources], embedder: MiniLM, text: str, language: str | None, system: str
) -> tuple[str, float] | None:
    """The FAQ answer whose question means the same as `text`, if one is close enough."""
    threshold = ctx.resources.settings.llm_faq_paraphrase_threshold
    index = faq_index(ctx, language, system)
    return answer_cache.paraphrase(ctx.conn, index, lambda: embedder.encode(text), threshold)


def replayable(ctx: StageContext[Resources], found: answer_cache.Cached, system: str, text: str) -> str | None:
    """A cached answer for a tenant without documents, unless the model wrote it and it would not be said
    now (it was cached before the guard, or with the guard off): it states a figure nobody gave, or answers
    a business question nobody told the bot about. That one is dropped and the question answered afresh. An
    operator's FAQ answer is theirs to state, figures and all."""
    if found.by == answer_cache.FAQ:
        return found.answer
    unknown = grounding.unsupported(found.answer, system, text)
    untold = topics.untold(text, system)
    if untold:  # the tenant's tools may tell the bot about it: read them only then
        untold = topics.untold(text, f"{system}\n{described(tenant_tools(ctx))}")
    if not unknown and not untold:
        return found.answer
    ctx.conn.delete(found.key)
    log.info("cached answer dropped: it would not be said now",
             extra={"job_id": ctx.job_id, "figures": sorted(unknown), "topics": untold, "by": found.by})
    return None


def answer_from_cache(ctx: StageContext[Resources], answer: str, deltas: Deltas) -> ChatResult:
    """A cached answer: no LLM call; the text goes out as one delta and all its chunks at once."""
    metrics.inc(metrics.CACHE_HITS, cache="answer")
    jobs.add_cost(ctx.conn, ctx.job_id, cache_hits=1, prompt_tokens=0, completion_tokens=0)
    deltas.chunks.feed(deltas.add(answer))
    log.info("reply from the answer cache", extra={"job_id": ctx.job_id})
    return ChatResult(text=answer, model=ctx.resources.engine.model, prompt_tokens=0, completion_tokens=0,
                      usage_estimated=False, ttft_s=None, finish_reason="stop", retries=0)


def answer_fixed(ctx: StageContext[Resources], answer: str, deltas: Deltas) -> ChatResult:
    """A reply the worker writes itself (the knowledge base has nothing relevant): no LLM call."""
    deltas.chunks.feed(deltas.add(answer))
    return ChatResult(text=answer, model=ctx.resources.engine.model, prompt_tokens=0, completion_tokens=0,
                      usage_estimated=False, ttft_s=None, finish_reason="stop", retries=0)


def answer_from_llm(
    ctx: StageContext[Resources],
    text: str,
    language: str | None,
    history: list[Any],
    deltas: Deltas,
    system: str,
    grounded: grounding.Grounding | None = None,
    acting: actions.Turn | None = None,
) -> ChatResult:
    """The model's reply. With `acting`, the model may call a tool instead; with a knowledge base that found
    nothing (`grounded.reply`), the model is asked only whether to act, and otherwise the fixed line is said."""
    settings, engine = ctx.resources.settings, ctx.resources.engine
    turns = settings.session_max_turns if ctx.job.options.session_id else history_turns(ctx.job, settings)
    native = acting is not None and settings.llm_tool_mode == "native"
    if native:
        system = f"{system}\n\n{actions.INSTRUCTIONS}"
    if grounded is not None and grounded.instructed:
        system = grounding.with_instructions(system)
    messages = prompts.build(text, system=system, language=language, history=history, turns=turns)
    if grounded is not None:
        messages = grounded.messages(messages)
    fixed = grounded.reply if grounded is not None else None
    if acting is not None and not native:
        call = guided_call(ctx, acting, text, prompts.recent_history(history, turns), deltas)
        if call is not None:
            return act(ctx, acting, call, messages, deltas, grounded, no_reply(engine.model))
        if fixed is not None:
            say(deltas, fixed)
            return no_reply(engine.model)
    hold = tool_calls.Hold() if native else None
    offered = actions.specs(acting.custom) if native and acting is not None else None
    result = speak(ctx, engine.stream(messages, tools=offered), deltas, grounded, hold, only_act=fixed is not None)
    call = None
    if native and hold is not None and not ctx.cancelled():
        call = tool_calls.from_server(result.tool_calls) or (tool_calls.from_text(hold.held) if hold.decided else None)
    if call is None or acting is None:
        if fixed is not None and not ctx.cancelled():
            say(deltas, fixed)
        return result
    return act(ctx, acting, call, messages, deltas, grounded, result)


def guided_call(ctx: StageContext[Resources], acting: actions.Turn, text: str, history: list[Message],
                deltas: Deltas) -> tool_calls.Call | None:
    """The action the model picks for the caller's words, with its arguments (`services.llm.guided`). Writing
    the arguments takes seconds (a ticket's summary: 7-8 s measured), so the caller hears a filler first."""
    names = guided.candidates(text, acting.custom)
    if not names:
        return None
    start = time.monotonic()
    engine = ctx.resources.engine
    chosen = guided.choose(engine, text, history, names, acting.custom)
    if chosen is not None and guided.needs_arguments(chosen, acting.custom):
        say(deltas, actions.filler(chosen, acting))
        deltas.chunks.cut()
        acting.filler_said = True
    call = guided.fill(engine, chosen, text, history, acting.custom) if chosen is not None else None
    acting.decision = {"candidates": names, "chosen": chosen, "seconds": round(time.monotonic() - start, 3)}
    log.info("action decided", extra={"job_id": ctx.job_id, **acting.decision})
    return call


def no_reply(model: str) -> ChatResult:
    """The accounting of a turn the model did not write (its words are a fixed line)."""
    return ChatResult(text="", model=model, prompt_tokens=0, completion_tokens=0, usage_estimated=False,
                      ttft_s=None, finish_reason="stop", retries=0)


def speak(ctx: StageContext[Resources], reply: ChatStream, deltas: Deltas, grounded: grounding.Grounding | None,
          hold: tool_calls.Hold | None, only_act: bool = False) -> ChatResult:
    """Stream one model reply to the caller. `hold` keeps back a call written as text; `only_act`: stop at
    the first sign of speech (the caller hears a fixed line instead)."""
    guard = grounded.guard if grounded is not None else None
    for delta in reply:
        if hold is not None:
            delta = hold.feed(delta)
            if only_act and hold.decided is False:
                reply.close()
                break
        sent = deltas.add(guard.feed(delta) if guard is not None else delta)
        if ctx.cancelled():
            reply.close()
            break
        deltas.chunks.feed(sent)
        if guard is not None and guard.tripped is not None:
            reply.close()  # a number no passage gave: say the don't-know line instead of the rest
            break
    if hold is not None and not only_act and not ctx.cancelled():
        tail = hold.flush()
        deltas.chunks.feed(deltas.add(guard.feed(tail) if guard is not None else tail))
    result = reply.result
    if guard is not None and grounded is not None and not ctx.cancelled() and not only_act:
        deltas.chunks.feed(deltas.add(guard.flush()))
        if guard.contradicted and guard.denies is not None:
            say(deltas, guard.denies)  # the document's own words, not the model's "yes"
            grounded.use.outcome = "contradicted"
            log.warning("reply opened with a yes the passages deny", extra={"job_id": ctx.job_id})
            result = dataclasses.replace(result, finish_reason="stop")
        elif guard.tripped is not None:
            say(deltas, grounded.fallback)
            grounded.use.outcome = "guarded"
            log.warning("reply stopped at an unsupported figure", extra={"job_id": ctx.job_id})
            result = dataclasses.replace(result, finish_reason="stop")
    account(ctx, result)
    return result


def act(ctx: StageContext[Resources], acting: actions.Turn, call: tool_calls.Call, messages: list[Message],
        deltas: Deltas, grounded: grounding.Grounding | None, first: ChatResult) -> ChatResult:
    """Run the model's call and answer from it: a refused call is put back to the model once, without
    tools; a built-in's line is said; a tool's result goes back to the model for the spoken answer."""
    engine = ctx.resources.engine

    def say_now(line: str) -> None:
        say(deltas, line)
        deltas.chunks.cut()  # the filler is spoken while the tool is awaited, not after

    outcome = actions.run(acting, call, say_now)
    acting.records.append(outcome.record)
    acting.action = outcome.action
    log.info("tool call", extra={"job_id": ctx.job_id, "tool": call.name, "status": outcome.record.status,
                                 "errors": outcome.record.errors})
    metrics.inc(metrics.TOOL_CALLS, tool=call.name if call.name in actions.BUILTIN else "custom",
                status=outcome.record.status)
    fixed = grounded.reply if grounded is not None else None
    note = None
    if outcome.record.status == "refused":
        if fixed is not None:
            say(deltas, fixed)
            return first
        note = actions.refusal_note(call, outcome.record.errors)
    elif outcome.say is not None:
        say(deltas, outcome.say)
        return dataclasses.replace(first, finish_reason="stop")
    else:
        note = actions.result_note(call.name, outcome.result)
        if grounded is not None and grounded.guard is not None:
            grounded.guard.allowed |= grounding.figures(json.dumps(outcome.result, ensure_ascii=False))
    deltas.separate()
    # The note follows the question rather than joining the system prompt: llama.cpp's slots reuse only the
    # longest unchanged prefix, so this way the prompt, history and question are not prefilled again.
    follow_up: list[Message] = [*messages, {"role": "system", "content": note}]
    again = speak(ctx, engine.stream(follow_up), deltas, grounded,
                  tool_calls.Hold())  # a second call written as text is held back, never spoken
    return dataclasses.replace(again, prompt_tokens=first.prompt_tokens + again.prompt_tokens,
                               completion_tokens=first.completion_tokens + again.completion_tokens,
                               ttft_s=first.ttft_s)


def say(deltas: Deltas, line: str) -> None:
    """Words the worker says itself, after whatever the reply said so far."""
    deltas.chunks.feed(deltas.add((" " if deltas.text.strip() else "") + line))


def account(ctx: StageContext[Resources], result: ChatResult) -> None:
    metrics.inc(metrics.LLM_TOKENS, result.prompt_tokens, kind="prompt")
    metrics.inc(metrics.LLM_TOKENS, result.completion_tokens, kind="completion")
    if result.ttft_s is not None:
        metrics.observe(metrics.LLM_TTFT, result.ttft_s)
    jobs.add_cost(ctx.conn, ctx.job_id, prompt_tokens=result.prompt_tokens,
                  completion_tokens=result.completion_tokens)
    extra: dict[str, Any] = {"job_id": ctx.job_id, "completion_tokens": result.completion_tokens,
                             "ttft_s": result.ttft_s, "finish_reason": result.finish_reason,
                             "retries": result.retries}
    if ctx.resources.settings.debug:
        extra["reply"] = result.text
    log.info("reply streamed", extra=extra)


def tenant_tools(ctx: StageContext[Resources]) -> list[tools.Tool]:
    """The tenant's own tools, when the model may call them."""
    return tools.list_tools(ctx.conn, ctx.job.tenant) if ctx.resources.settings.llm_tools else []


def described(custom: list[tools.Tool]) -> str:
    """What the tools tell the bot it can find out ("lookup order: Look up an order's status")."""
    return "\n".join(f"{t.name.replace('_', ' ')}: {t.description}" for t in custom)


def offer_actions(ctx: StageContext[Resources], text: str, language: str | None,
                  history: list[Any], custom: list[tools.Tool]) -> actions.Turn | None:
    """The actions this turn may take (None when tools are off, or for a text-only job with no caller)."""
    settings, job = ctx.resources.settings, ctx.job
    if not settings.llm_tools:
        return None
    said = [m["content"] for m in history if isinstance(m, dict) and m.get("role") == "user"
            and isinstance(m.get("content"), str)]
    return actions.Turn(conn=ctx.conn, settings=settings, tenant=job.tenant, job_id=ctx.job_id,
                        call_id=job.options.call_id, language=language, said=" ".join([*said, text]),
                        custom=custom, filler_after_s=settings.llm_tool_filler_after_s)


def user_text(job: Job) -> str:
    """The transcript when the plan ran ASR first, else the text the caller sent."""
    if "asr" in job.plan:
        text = (job.results.asr.text if job.results.asr else "").strip()
        if not text:
            raise StageError("empty_transcript", "no speech was recognised in the audio, so there is nothing to answer")
        return text
    text = (job.inputs.text or "").strip()
    if not text:
        raise StageError("empty_text", "the request has no text to answer")
    return text


def system_for(job: Job, settings: LlmSettings) -> str:
    """The system prompt, with the caller's instructions (a live call's `session.update`) after ours: they
    shape the reply, and the shared prefix keeps the server's warmed prompt cache useful."""
    instructions = (job.options.instructions or "").strip()
    return f"{settings.llm_system_prompt}\n\n{instructions}" if instructions else settings.llm_system_prompt


def history_turns(job: Job, settings: LlmSettings) -> int:
    """How much of a history sent with the job to keep: what the job asks (a live call's own setting),
    else as much as a session keeps."""
    asked = job.options.history_turns
    return asked if isinstance(asked, int) and asked > 0 else settings.session_max_turns


def caller_language(job: Job) -> str | None:
    """The language the caller asked for, else the one ASR detected."""
    asked = job.options.language
    detected = job.results.asr.language if job.results.asr else None
    return asked or detected or None


def index_document(conn: Any, settings: LlmSettings, resources: Resources, tenant: str, doc_id: str,
                   generation: int) -> None:
    """The knowledge indexing job (`shared.knowledge.INDEX_TASK`) on the llm worker, which has the embedder."""
    embedder = resources.embedder
    index.run(conn, embedder.encode if embedder is not None else None, tenant, doc_id, int(generation),
              settings.knowledge_passage_size)
