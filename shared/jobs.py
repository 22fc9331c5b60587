"""The job record: one Redis hash per request, keyed by an unguessable id, and its types.

The hash (its fields are named in `shared.keys`) holds the meta (kind, plan,
priority, inputs, options, tenant), status, error and creation time; per stage its
state (`StageState`) and result (`AsrResult`, `LlmResult` or `AnalysisResult`,
`TtsResult`); per streamed sentence its audio record (`Chunk`); and cost counters.
Each field is written on its own, so one stage writes without racing another.

`fetch` reads the record as a `Job`; `Job.wire()` (and `load`) give the JSON
document the API shows and `job.done` carries, exactly as stored: fields a
stage did not write are absent, not null.
"""

from __future__ import annotations

import json
import secrets
import time
from enum import StrEnum
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, model_validator

from shared import keys
from shared.redisio import text
from shared.tenants import OPEN_TENANT

Writer = redis.client.Pipeline | redis.Redis


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StageStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


TERMINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})

PLANS: dict[str, list[str]] = {
    "turn": ["asr", "llm", "tts"],
    "transcription": ["asr"],
    "chat": ["llm", "tts"],
    "chat_text": ["llm"],
    "speech": ["tts"],
}


class Record(BaseModel):
    """A part of the record. Unknown fields are kept (an engine may add its own), and `wire()` gives back
    exactly what was written: the API's and the events' format does not depend on these types."""

    model_config = ConfigDict(extra="allow")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class JobError(Record):
    stage: str | None = None
    reason: str
    message: str


class StageState(Record):
    status: StageStatus
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    queue_wait_s: float | None = None
    run_s: float | None = None
    attempts: int = 0
    error: JobError | None = None


class Inputs(Record):
    blob_id: str | None = None
    filename: str | None = None
    duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    codec: str | None = None
    container: str | None = None
    text: str | None = None


class Options(Record):
    """What the caller asked for. Values a stage checks itself (and fails the job with a reason when they
    are wrong) are typed `Any` here, so a bad one reaches that check instead of breaking the record."""

    language: str | None = None
    voice: str | None = None
    engine: str | None = None
    speed: Any = None
    format: str | None = None
    session_id: str | None = None
    history: Any = None
    history_turns: int | None = None  # exchanges of `history` to keep (a live call's own setting)
    instructions: str | None = None  # added to the system prompt (a live call's session.update)
    stream: bool | None = None
    hotwords: Any = None
    initial_prompt: str | None = None
    channel_speakers: Any = None
    analysis: bool | None = None
    batch_id: str | None = None
    call_id: str | None = None  # the live call a job belongs to


class Segment(Record):
    start: float
    end: float
    text: str
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    low_confidence: bool = False
    speaker: str | None = None
    channel: int | None = None


class AsrResult(Record):
    text: str = ""
    language: str | None = None
    language_probability: float | None = None
    duration_s: float = 0.0
    segments: list[Segment] = []
    low_confidence: bool = False
    engine: str | None = None
    model: str | None = None
    rtf: float | None = None
    channels: int = 1
    speakers: list[str] | None = None
    channel_languages: list[str | None] | None = None
    encoder_window_s: float | None = None  # the longest input whisper's encoder saw: 30 s, less for a call's piece
    batched: bool = False
    cancelled: bool = False


class Sentence(Record):
    """A sentence of a streamed reply, as the LLM cut it."""

    seq: int
    text: str


class KnowledgePassage(Record):
    """A knowledge-base passage the reply was grounded on (shown in the record, never spoken)."""

    document_id: str
    title: str
    passage_id: str
    score: float | None = None


class KnowledgeUse(Record):
    """What the knowledge base gave a reply: the passages in its prompt, or why there were none."""

    passages: list[KnowledgePassage] = []
    found: bool = False  # a passage scored above the relevance threshold
    outcome: str | None = None  # grounded, not_found (said it does not know), small_talk, no_documents, guarded,
    # contradicted (a "yes" the passages deny: their sentence was said instead)
    topics: list[str] | None = None  # not_found without documents: the business topics nobody told the bot about
    retrieval_s: float | None = None
    version: int | None = None


class ToolCallRecord(Record):
    """One tool call in a reply: `status` done, refused (its arguments failed the checks) or failed."""

    name: str
    arguments: Any = None
    status: str
    errors: list[str] = []
    result: Any = None
    elapsed_s: float | None = None
    http_status: int | None = None
    delivery_id: str | None = None  # the webhook delivery it caused (a ticket, a failed tool)


class LlmResult(Record):
    text: str = ""
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    ttft_s: float | None = None
    finish_reason: str | None = None
    retries: int = 0
    language: str | None = None
    chunks: list[Sentence] = []
    cache: str | None = None
    history_turns: int = 0
    cache_match: str | None = None
    cache_similarity: float | None = None
    cancelled: bool = False
    knowledge: KnowledgeUse | None = None
    tool_calls: list[ToolCallRecord] = []
    action: str | None = None  # what the conversation does next: transfer or end_call
    tool_decision: dict[str, Any] | None = None  # guided tool use: the candidate actions and the model's pick


class AnalysisResult(Record):
    """The llm stage's result for a recorded call (`options.analysis`): a structured `CallAnalysis`."""

    analysis: dict[str, Any] | None = None
    attempts: int = 0
    chunks: int = 0
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0


class ChunkError(Record):
    reason: str
    message: str


class Chunk(Record):
    """One synthesized sentence of the reply (`keys.chunk_field`)."""

    seq: int
    text: str
    blob_id: str | None = None
    duration_s: float = 0.0
    word_ends_s: list[float] | None = None  # when each word of `text` ends in the audio, if the engine said
    sample_rate: int | None = None
    engine: str | None = None
    voice: str | None = None
    language: str | None = None
    fallback: dict[str, Any] | None = None
    cached: bool = False
    synth_s: float | None = None
    ready_s: float | None = None
    error: ChunkError | None = None


class TtsResult(Record):
    blob_id: str | None = None
    content_type: str | None = None
    format: str | None = None
    duration_s: float = 0.0
    sample_rate: int | None = None
    engine: str | None = None
    voice: str | None = None
    language: str | None = None
    characters: int = 0
    fallback: dict[str, Any] | None = None
    synth_s: float = 0.0
    rtf: float | None = None
    cached_chunks: int = 0
    chunks: list[Chunk] = []
    cancelled: bool = False


class Results(Record):
    asr: AsrResult | None = None
    llm: LlmResult | AnalysisResult | None = None
    tts: TtsResult | None = None


class Job(Record):
    id: str
    kind: str
    plan: list[str]
    priority: str
    tenant: str = OPEN_TENANT
    status: JobStatus = JobStatus.QUEUED
    created_at: float = 0.0
    inputs: Inputs
    options: Options
    stages: dict[str, StageState] = {}
    results: Results = Results()
    error: JobError | None = None
    chunks: list[Chunk] = []
    cost: dict[str, float] = {}
    ttfa_s: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _typed_llm_result(cls, data: Any) -> Any:
        """From the wire format: the llm result's type follows the options (a call analysis or a reply)."""
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            return data
        llm = data["results"].get("llm")
        if not isinstance(llm, dict):
            return data
        options = data.get("options")
        analysis = options.analysis if isinstance(options, Options) else (options or {}).get("analysis")
        typed = (AnalysisResult if analysis else LlmResult).model_validate(llm)
        return {**data, "results": {**data["results"], "llm": typed}}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Job:
        """A record as the API shows it (`wire()`, a `job.done` event) back into a `Job`."""
        return cls.model_validate(data)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def stage(self, name: str) -> StageState | None:
        return self.stages.get(name)

    @property
    def reply(self) -> LlmResult | None:
        """The llm stage's spoken-reply result (None before it ran, or for a call analysis)."""
        llm = self.results.llm
        return llm if isinstance(llm, LlmResult) else None

    @property
    def analysis(self) -> AnalysisResult | None:
        llm = self.results.llm
        return llm if isinstance(llm, AnalysisResult) else None

    def blob_ids(self) -> list[str]:
        """Every blob the job owns, so deleting the job can remove them."""
        ids = [self.inputs.blob_id]
        if self.results.tts is not None:
            ids.append(self.results.tts.blob_id)
            ids.extend(c.blob_id for c in self.results.tts.chunks)
        ids.extend(c.blob_id for c in self.chunks)
        return [i for i in dict.fromkeys(ids) if i]


RESULT_TYPES: dict[str, type[Record]] = {"asr": AsrResult, "tts": TtsResult}


def result_type(stage: str, options: Options) -> type[Record]:
    if stage == "llm":
        return AnalysisResult if options.analysis else LlmResult
    return RESULT_TYPES[stage]


def new_id() -> str:
    return secrets.token_urlsafe(16)


def key(job_id: str) -> str:
    return keys.job(job_id)


def create(
    conn: redis.Redis,
    *,
    kind: str,
    priority: str,
    inputs: dict[str, Any],
    options: dict[str, Any],
    ttl_s: int,
    plan: list[str] | None = None,
    job_id: str | None = None,
    pipe: redis.client.Pipeline | None = None,
    tenant: str = OPEN_TENANT,
) -> str:
    job_id = job_id or new_id()
    meta = {"kind": kind, "plan": plan or PLANS[kind], "priority": priority, "inputs": inputs, "options": options,
            "tenant": tenant}
    p = pipe if pipe is not None else conn.pipeline()
    p.hset(key(job_id), mapping={keys.JOB_META: json.dumps(meta, ensure_ascii=False),
                                 keys.JOB_STATUS: JobStatus.QUEUED.value, keys.JOB_CREATED_AT: time.time()})
    p.expire(key(job_id), ttl_s)
    if pipe is None:
        p.execute()
    return job_id


def fetch(conn: redis.Redis, job_id: str) -> Job | None:
    """The whole record, or None for an unknown id."""
    raw = conn.hgetall(key(job_id))
    if not raw or keys.JOB_META.encode() not in raw:
        return None
    return parse(job_id, {text(k): text(v) for k, v in raw.items()})


def parse(job_id: str, fields: dict[str, str]) -> Job:
    """A record from its hash fields."""
    meta = json.loads(fields[keys.JOB_META])
    options = Options.model_validate(meta["options"])
    stages = {name: StageState.model_validate_json(fields[keys.stage_field(name)])
              for name in meta["plan"] if keys.stage_field(name) in fields}
    results = Results.model_validate({
        name: result_type(name, options).model_validate_json(fields[keys.result_field(name)])
        for name in meta["plan"] if keys.result_field(name) in fields})
    chunks = [Chunk.model_validate_json(v) for k, v in fields.items() if k.startswith(keys.CHUNK_PREFIX)]
    return Job(
        id=job_id,
        kind=meta["kind"],
        plan=meta["plan"],
        priority=meta["priority"],
        tenant=meta.get("tenant", OPEN_TENANT),
        status=JobStatus(fields.get(keys.JOB_STATUS, JobStatus.QUEUED)),
        created_at=float(fields.get(keys.JOB_CREATED_AT, 0)),
        inputs=Inputs.model_validate(meta["inputs"]),
        options=options,
        stages=stages,
        results=results,
        error=JobError.model_validate_json(fields[keys.JOB_ERROR]) if keys.JOB_ERROR in fields else None,
        chunks=sorted(chunks, key=lambda c: c.seq),
        cost={k[len(keys.COST_PREFIX):]: float(v) for k, v in fields.items() if k.startswith(keys.COST_PREFIX)},
        ttfa_s=float(fields[keys.JOB_TTFA]) if keys.JOB_TTFA in fields else None,
    )


def load(conn: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """The record as the API shows it (`GET /v1/jobs/{id}`), or None for an unknown id."""
    job = fetch(conn, job_id)
    return job.wire() if job is not None else None


def next_stage(plan: list[str], stage: str) -> str | None:
    i = plan.index(stage)
    return plan[i + 1] if i + 1 < len(plan) else None


def _json(value: Record | dict[str, Any]) -> str:
    data = value.wire() if isinstance(value, Record) else value
    return json.dumps(data, ensure_ascii=False)


def put_stage(pipe: Writer, job_id: str, stage: str, state: StageState | dict[str, Any]) -> None:
    pipe.hset(key(job_id), keys.stage_field(stage), _json(state))


def put_result(pipe: Writer, job_id: str, stage: str, result: Record | dict[str, Any]) -> None:
    pipe.hset(key(job_id), keys.result_field(stage), _json(result))


def put_status(pipe: Writer, job_id: str, status: JobStatus | str, error: JobError | dict[str, Any] | None = None,
               ) -> None:
    pipe.hset(key(job_id), keys.JOB_STATUS, JobStatus(status).value)
    if error is not None:
        pipe.hset(key(job_id), keys.JOB_ERROR, _json(error))


def put_chunk(pipe: Writer, job_id: str, seq: int, chunk: Chunk | dict[str, Any]) -> None:
    """One synthesized sentence of the reply."""
    data = chunk.wire() if isinstance(chunk, Chunk) else chunk
    pipe.hset(key(job_id), keys.chunk_field(seq), json.dumps({**data, "seq": seq}, ensure_ascii=False))


def get_chunk(conn: Writer, job_id: str, seq: int) -> Chunk | None:
    """Sentence `seq`'s stored audio record, if it is stored."""
    raw = conn.hget(key(job_id), keys.chunk_field(seq))
    return Chunk.model_validate_json(raw) if raw is not None else None


def add_cost(pipe: Writer, job_id: str, **amounts: float) -> None:
    """Per-turn cost accounting: audio_s, prompt_tokens, completion_tokens, tts_characters, cache_hits."""
    for item, amount in amounts.items():
        pipe.hincrbyfloat(key(job_id), keys.cost_field(item), amount)


def status(conn: redis.Redis, job_id: str) -> JobStatus | None:
    value = conn.hget(key(job_id), keys.JOB_STATUS)
    return JobStatus(text(value)) if value else None


def blob_ids(record: Job | dict[str, Any]) -> list[str]:
    """Every blob a job owns (a `Job`, or the record as the API shows it)."""
    if isinstance(record, dict):
        if not record:
            return []
        record = Job.from_wire(record)
    return record.blob_ids()
