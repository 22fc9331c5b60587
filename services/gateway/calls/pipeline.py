"""A call's way into the stage pipeline: the one module here that touches job records, queues, events and
sentence audio, so a change to that contract is adapted here alone.

- `submit_piece`: a stretch of the caller's speech as a live `transcription` job (plan asr).
- `transcript`: wait for a piece's text.
- `submit_reply`: a `chat` job (plan llm → tts, sentences streamed) with the call's history passed in.
- `reply_events`: the reply as it is produced: text deltas, then each sentence's PCM in order.
- `cancel`: stop a reply (the LLM sees the job cancelled) and drop its queued sentence jobs.
- `live_backlog`: how many transcriptions and replies wait for a worker (eager replies back off).
- `notify`: a webhook event to the tenant (a transfer, the end of the call), delivered by a job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis

from services.gateway import reply_audio
from services.gateway.config import GatewaySettings
from services.gateway.eventstream import follow
from services.gateway.submit import submit
from services.gateway.uploads import CheckedAudio
from shared import audio, events, jobs, queues, retention, webhooks

# A cancelled reply's event stream is kept this long, so a late reader still sees why it ended.
CANCELLED_STREAM_TTL_S = 60


def submit_piece(conn: redis.Redis, settings: GatewaySettings, pcm16k: bytes, *, tenant: str,
                 language: str | None, call_id: str) -> str:
    samples = np.frombuffer(pcm16k, dtype=np.int16)
    duration = len(samples) / audio.SAMPLE_RATE
    info = audio.AudioInfo(duration_s=duration, sample_rate=audio.SAMPLE_RATE, channels=1, codec="pcm_s16le",
                           container="wav")
    upload = CheckedAudio(audio.to_wav(samples, audio.SAMPLE_RATE), info, f"call-{call_id}.wav", "audio/wav")
    return submit(conn, settings, kind="transcription", options={"language": language, "call_id": call_id},
                  upload=upload, tenant=tenant)


@dataclass
class Transcript:
    text: str
    language: str | None
    audio_s: float
    error: str | None = None


async def transcript(aconn: aioredis.Redis, job_id: str, timeout_s: float) -> Transcript:
    """The piece's text once its job ends (an empty text, with the reason, if it failed or timed out)."""
    async for event in follow(aconn, job_id, idle_s=timeout_s):
        if event is None:  # nothing at all for `timeout_s`: no ASR worker is taking the piece
            break
        _, type_, data = event
        if type_ == "job.done":
            asr = jobs.Job.from_wire(data["job"]).results.asr or jobs.AsrResult()
            return Transcript(asr.text.strip(), asr.language, asr.duration_s)
        if type_ in events.TERMINAL:
            reason = (data.get("error") or {}).get("reason") or type_
            return Transcript("", None, 0.0, error=str(reason))
    return Transcript("", None, 0.0, error="timeout")


def submit_reply(conn: redis.Redis, settings: GatewaySettings, text: str, *, history: list[dict[str, str]],
                 tenant: str, language: str | None, voice: str | None, call_id: str,
                 instructions: str | None = None) -> str:
    options: dict[str, Any] = {"history": history, "history_turns": settings.call_history_turns,
                               "instructions": instructions, "language": language, "voice": voice, "stream": True,
                               "call_id": call_id}
    return submit(conn, settings, kind="chat", options=options, text=text, tenant=tenant)


def submit_speech(conn: redis.Redis, settings: GatewaySettings, text: str, *, tenant: str, language: str | None,
                  voice: str | None, call_id: str) -> str:
    """Words the bot says as they are (a greeting, a goodbye): a `speech` job (plan tts)."""
    options: dict[str, Any] = {"language": language, "voice": voice, "call_id": call_id}
    return submit(conn, settings, kind="speech", options=options, text=text, tenant=tenant)


@dataclass
class Delta:
    """Reply text as the LLM writes it."""

    text: str


@dataclass
class Sentence:
    """One spoken sentence of the reply, as 16-bit PCM at the rate asked for."""

    seq: int
    text: str
    pcm: bytes
    rate: int
    word_ends_s: list[float] | None = None  # when each word of `text` ends, if the TTS engine said

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) / 2 / self.rate * 1000


@dataclass
class Finished:
    """The reply job ended: `status` done, failed or cancelled."""

    status: jobs.JobStatus
    text: str
    reason: str | None = None
    cost: dict[str, float] | None = None
    knowledge: jobs.KnowledgeUse | None = None  # the knowledge-base passages the reply was grounded on
    tool_calls: list[jobs.ToolCallRecord] = field(default_factory=list)  # the tools it called, with results
    action: str | None = None  # what the call does next: transfer or end_call


ReplyEvent = Delta | Sentence | Finished


async def reply_events(conn: redis.Redis, aconn: aioredis.Redis, job_id: str, rate: int, timeout_s: float
                       ) -> AsyncIterator[ReplyEvent]:
    """The reply's text deltas as they come and its sentences in order (each as soon as it and all before it
    are spoken), then one `Finished`."""
    order = reply_audio.ChunkOrder()
    text = ""
    async for event in follow(aconn, job_id, idle_s=timeout_s):
        # A long reply on a busy server may take minutes in all; only silence for `timeout_s` is a failure.
        if event is None:
            yield Finished(jobs.JobStatus.FAILED, text, "timeout")
            return
        _, type_, data = event
        order.feed(event)
        if type_ == "llm.delta":
            text += str(data.get("text") or "")
            yield Delta(str(data.get("text") or ""))
        for seq in order.take():
            found = await asyncio.to_thread(reply_audio.chunk_pcm, conn, job_id, seq, rate)
            record = await asyncio.to_thread(jobs.get_chunk, conn, job_id, seq)
            if found is not None and record is not None:
                yield Sentence(seq, str(record.text or ""), found[0], rate, record.word_ends_s)
        if type_ in events.TERMINAL:
            status = {"job.done": jobs.JobStatus.DONE, "job.failed": jobs.JobStatus.FAILED}.get(
                type_, jobs.JobStatus.CANCELLED)
            reason = (data.get("error") or {}).get("reason")
            job = jobs.Job.from_wire(data["job"]) if data.get("job") else None
            reply = job.reply if job is not None else None
            if reply is None:
                yield Finished(status, text, reason, job.cost if job is not None else None)
                return
            yield Finished(status, text, reason, job.cost if job is not None else None, reply.knowledge,
                           reply.tool_calls, reply.action)
            return
    yield Finished(jobs.JobStatus.FAILED, text, "timeout")


def cancel(conn: redis.Redis, settings: GatewaySettings, job_id: str) -> None:
    """Cancel a reply: the LLM stops at its next token, sentence jobs still queued are deleted, and those
    already running find the job gone and store nothing."""
    if jobs.status(conn, job_id) in jobs.TERMINAL_STATUSES:
        return
    jobs.put_status(conn, job_id, jobs.JobStatus.CANCELLED)
    events.append(conn, job_id, "job.cancelled", {"id": job_id}, settings.job_ttl_s)
    retention.purge_job(conn, job_id, keep_events_s=CANCELLED_STREAM_TTL_S)


def job_options(conn: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """A job's options (tests read the history a reply was asked with)."""
    record = jobs.load(conn, job_id)
    return record["options"] if record else None


def notify(conn: redis.Redis, settings: GatewaySettings, tenant: str, event: str, data: dict[str, Any]) -> str | None:
    """Queue a webhook delivery of `event` if the tenant has an endpoint for it; its delivery id, else None."""
    return webhooks.deliver(conn, settings, tenant, event, data)


LIVE_QUEUES = tuple(queues.rq_key(queues.name(stage, "live")) for stage in ("asr", "llm"))


async def live_backlog(aconn: aioredis.Redis) -> int:
    """Jobs waiting in the live ASR and LLM queues (not those running)."""
    async with aconn.pipeline(transaction=False) as pipe:
        for key in LIVE_QUEUES:
            pipe.llen(key)
        return sum(int(n) for n in await pipe.execute())
