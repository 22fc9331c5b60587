"""Stage queues: `<stage>:live` and `<stage>:batch`, and how a stage gets enqueued.

Workers never import each other: a stage job names `shared.stage.perform` and a
sentence job `shared.stage.perform_sentence`; the worker serving the queue runs
its own service's stage, or its task of that name (`shared.worker.Service`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import redis
from rq import Queue, Retry

from shared import jobs, keys
from shared.config import CommonSettings
from shared.redisio import transaction

STAGES = ("asr", "llm", "tts")
PRIORITIES = ("live", "batch")
STAGE_TASK = "shared.stage.perform"
CHUNK_TASK = "shared.stage.perform_sentence"  # one sentence of a streamed reply, on the tts queues


def name(stage: str, priority: str) -> str:
    return f"{stage}:{priority}"


def names_for(stage: str) -> list[str]:
    """Live first: rq's default dequeue order is the order given, so live drains before batch."""
    return [name(stage, p) for p in PRIORITIES]


def all_names() -> list[str]:
    return [q for s in STAGES for q in names_for(s)]


def rq_key(queue_name: str) -> str:
    """The Redis list rq keeps a queue's job ids in."""
    return f"{Queue.redis_queue_namespace_prefix}{queue_name}"


def rq_job_id(job_id: str, stage: str) -> str:
    """The rq job carrying one stage of one of our jobs (rq ids allow only [A-Za-z0-9_-])."""
    return f"{job_id}_{stage}"


def written(job_id: str, stage: str) -> list[tuple[str, str]]:
    """Hash fields a server holds once it holds a submission: the record `jobs.create` wrote, and the enqueue
    marker of its first `stage`, written with the rq job in one transaction. (Not the rq job itself: a fast
    stage may have finished and deleted it already.)"""
    return [(jobs.key(job_id), keys.JOB_META), (jobs.key(job_id), keys.enqueued_field(stage))]


def timeout_s(settings: CommonSettings, audio_s: float, stage: str = "asr") -> int:
    """rq's hard limit for a stage: ASR and TTS scale with the audio; the LLM's with its own bound
    (a structured call analysis is several non-streamed requests on a shared, possibly busy server)."""
    if stage == "llm":
        return int(settings.job_timeout_llm_s)
    return int(settings.job_timeout_base_s + settings.job_timeout_per_audio_s * audio_s)


class Admit(Protocol):
    """A condition checked in the same transaction as an enqueue (the gateway's queue-depth limit)."""

    @property
    def key(self) -> str:
        """Watched with the job: a change to it between the check and the write runs both again."""

    def check(self, pipe: redis.client.Pipeline) -> None:
        """Raise to refuse the enqueue (`pipe` is in immediate mode, watching `key`)."""


def enqueue(
    conn: redis.Redis, settings: CommonSettings, job_id: str, stage: str, priority: str, audio_s: float = 0.0,
    admit: Admit | None = None,
) -> bool:
    """Put a job's stage on its queue once. Returns False if it was already enqueued.

    The enqueue marker (`keys.enqueued_field`) and the rq job are written in one transaction, so a re-run of the
    previous stage (after its worker died, even between the two) enqueues the stage exactly once.
    """

    def writes(pipe: redis.client.Pipeline) -> None:
        jobs.put_stage(pipe, job_id, stage, jobs.StageState(status=jobs.StageStatus.QUEUED, queued_at=time.time(),
                                                           attempts=0))
        Queue(name(stage, priority), connection=conn).enqueue(
            STAGE_TASK,
            job_id,
            job_id=rq_job_id(job_id, stage),
            job_timeout=timeout_s(settings, audio_s, stage),
            result_ttl=0,
            failure_ttl=settings.job_ttl_s,
            ttl=settings.job_ttl_s,  # a queued job (its hash holds the text) expires like the record
            description=f"{stage} {job_id}",
            retry=_retry(settings, stage),
            pipeline=pipe,
        )

    return _once(conn, job_id, keys.enqueued_field(stage), writes, admit)


def enqueue_chunk(
    conn: redis.Redis, settings: CommonSettings, job_id: str, seq: int, text: str, priority: str
) -> bool:
    """Put one sentence of a streamed reply on `tts:<priority>` as soon as the LLM has finished it.

    Once per (job, seq), like `enqueue`. The job's `tts` stage, enqueued after the LLM
    finishes, waits for these chunks (or speaks any left unclaimed) and joins them.
    A live reply's first sentence goes to the front: a caller waiting for any audio at
    all goes ahead of other callers' later sentences, which have audio playing already.
    """
    first_first = seq == 0 and priority == "live"

    def writes(pipe: redis.client.Pipeline) -> None:
        Queue(name("tts", priority), connection=conn).enqueue(
            CHUNK_TASK,
            job_id,
            seq,
            text,
            job_id=rq_job_id(job_id, f"tts{seq}"),
            job_timeout=int(settings.job_timeout_base_s),
            result_ttl=0,
            failure_ttl=settings.job_ttl_s,
            ttl=settings.job_ttl_s,  # a queued job (its hash holds the text) expires like the record
            description=f"tts chunk {seq} {job_id}",
            retry=_retry(settings, "tts"),
            at_front=first_first,
            pipeline=pipe,
        )

    return _once(conn, job_id, keys.sentence_enqueued_field(seq), writes)


def _retry(settings: CommonSettings, stage: str) -> Retry:
    """rq's own retries: a forked job process that dies is put back at once by its worker (rq's paths
    for abandoned jobs fail them otherwise). The stage's attempt counter enforces the real budget."""
    return Retry(max=settings.max_attempts(stage), enqueue_at_front=True)


def _once(conn: redis.Redis, job_id: str, marker: str, writes: Callable[[redis.client.Pipeline], None],
          admit: Admit | None = None) -> bool:
    """Run `writes` and set `marker` on the job hash in one transaction, unless the marker is already set
    (or `admit` refuses)."""
    key = jobs.key(job_id)

    def once(pipe: redis.client.Pipeline) -> bool:
        if pipe.hexists(key, marker):
            return False
        if admit:
            admit.check(pipe)  # raises to refuse; then nothing is written
        pipe.multi()
        pipe.hset(key, marker, time.time())
        writes(pipe)
        return True

    # WATCHed: the job hash changes meanwhile (a sentence stored, a cost added), or the admitting
    # queue does (another submission, a worker taking a job); then look again.
    return transaction(conn, once, key, *([admit.key] if admit else []))
