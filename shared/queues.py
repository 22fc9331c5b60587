"""Stage queues: `<stage>:live` and `<stage>:batch`, and how a stage gets enqueued.

Workers never import each other: the next stage is named by its dotted path.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from rq import Queue, Retry

from shared import jobs
from shared.config import CommonSettings

STAGES = ("asr", "llm", "tts")
PRIORITIES = ("live", "batch")
TASKS = {
    "asr": "services.asr.tasks.run",
    "llm": "services.llm.tasks.run",
    "tts": "services.tts.tasks.run",
}
CHUNK_TASK = "services.tts.tasks.run_chunk"


def name(stage: str, priority: str) -> str:
    return f"{stage}:{priority}"


def names_for(stage: str) -> list[str]:
    """Live first: rq's default dequeue order is the order given, so live drains before batch."""
    return [name(stage, p) for p in PRIORITIES]


def all_names() -> list[str]:
    return [q for s in STAGES for q in names_for(s)]


def rq_job_id(job_id: str, stage: str) -> str:
    """The rq job carrying one stage of one of our jobs (rq ids allow only [A-Za-z0-9_-])."""
    return f"{job_id}_{stage}"


def timeout_s(settings: CommonSettings, audio_s: float, stage: str = "asr") -> int:
    """rq's hard limit for a stage: ASR and TTS scale with the audio; the LLM's with its own bound
    (a structured call analysis is several non-streamed requests on a shared, possibly busy server)."""
    if stage == "llm":
        return int(settings.job_timeout_llm_s)
    return int(settings.job_timeout_base_s + settings.job_timeout_per_audio_s * audio_s)


def enqueue(
    conn: redis.Redis, settings: CommonSettings, job_id: str, stage: str, priority: str, audio_s: float = 0.0
) -> bool:
    """Put a job's stage on its queue once. Returns False if it was already enqueued.

    The `enq:<stage>` marker and the rq job are written in one transaction, so a re-run of the
    previous stage (after its worker died, even between the two) enqueues the stage exactly once.
    """

    def writes(pipe: redis.client.Pipeline) -> None:
        jobs.put_stage(pipe, job_id, stage, {"status": "queued", "queued_at": time.time(), "attempts": 0})
        Queue(name(stage, priority), connection=conn).enqueue(
            TASKS[stage],
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

    return _once(conn, job_id, f"enq:{stage}", writes)


def enqueue_chunk(
    conn: redis.Redis, settings: CommonSettings, job_id: str, seq: int, text: str, priority: str
) -> bool:
    """Put one sentence of a streamed reply on `tts:<priority>` as soon as the LLM has finished it.

    Once per (job, seq), like `enqueue`. The job's `tts` stage, enqueued after the LLM
    finishes, waits for these chunks (or speaks any left unclaimed) and joins them.
    """

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
            pipeline=pipe,
        )

    return _once(conn, job_id, f"enq:tts:{seq}", writes)


def _retry(settings: CommonSettings, stage: str) -> Retry:
    """rq's own retries: a forked job process that dies is put back at once by its worker (rq's paths
    for abandoned jobs fail them otherwise). The stage's attempt counter enforces the real budget."""
    return Retry(max=settings.max_attempts(stage), enqueue_at_front=True)


def _once(conn: redis.Redis, job_id: str, marker: str, writes: Callable[[redis.client.Pipeline], None]) -> bool:
    """Run `writes` and set `marker` on the job hash in one transaction, unless the marker is already set."""
    key = jobs.key(job_id)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                if pipe.hexists(key, marker):
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.hset(key, marker, time.time())
                writes(pipe)
                pipe.execute()
                return True
            except redis.WatchError:
                continue  # the job hash changed meanwhile (a sentence stored, a cost added): look again
