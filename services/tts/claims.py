"""Claim and announce: each sentence of a streamed reply spoken once, stored, and announced in order.

The LLM enqueues one sentence job per sentence while it is still writing, and
the job's `tts` stage comes after it. Whoever gets to a sentence first claims it
(HSETNX of `keys.sentence_claim_field(seq)` on the job hash) and speaks it; the
stage waits for sentences claimed elsewhere, and speaks one itself when its
claimer takes longer than `tts_chunk_wait_s` (the claimer may have died). A claim
names its claimer (the rq job), so when that very job runs again after its worker
died (the claim is older than a worker takes to be declared dead) it takes the
sentence up again, within the stage's retry budget. Storing a sentence is one
optimistic transaction that refuses a second copy, so a late claimer cannot
duplicate it, and that announces `tts.chunk` events strictly in sequence order
even when several workers finish out of order. `docs/architecture.md` draws it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from services.tts import cache, formats, synth
from services.tts.config import TtsSettings
from services.tts.options import SpeakOptions, from_job
from shared import audio, events, jobs, keys, metrics, queues
from shared.blobs import RedisBlobStore
from shared.jobs import Chunk, ChunkError, Job, JobStatus
from shared.redisio import text as as_text
from shared.redisio import transaction
from shared.stage import StageError

log = logging.getLogger(__name__)


def url(job_id: str, seq: int) -> str:
    return f"/v1/jobs/{job_id}/chunks/{seq}"


def claim(conn: redis.Redis, job_id: str, seq: int, owner: str = "") -> bool:
    """Take the sentence for `owner` (an rq job id); the value is "<claim time> <owner>", so a waiter can
    tell a stale claim and a re-run of the owner its own."""
    return bool(conn.hsetnx(jobs.key(job_id), keys.sentence_claim_field(seq), f"{time.time()} {owner}".strip()))


def _claim(conn: redis.Redis, job_id: str, seq: int) -> tuple[float, str] | None:
    value = conn.hget(jobs.key(job_id), keys.sentence_claim_field(seq))
    if value is None:
        return None
    at, _, owner = as_text(value).partition(" ")
    return float(at), owner


def claimed_at(conn: redis.Redis, job_id: str, seq: int) -> float | None:
    found = _claim(conn, job_id, seq)
    return found[0] if found else None


def claim_owner(conn: redis.Redis, job_id: str, seq: int) -> str | None:
    found = _claim(conn, job_id, seq)
    return found[1] if found else None


def _abandoned_by(conn: redis.Redis, settings: TtsSettings, job_id: str, seq: int, owner: str) -> bool:
    """Whether `owner` (this rq job) claimed the sentence in an earlier run that died: a run is re-delivered
    only once its worker missed heartbeats for `worker_dead_after_s`, so a younger claim by the same rq
    job is a duplicate delivery still at work, not a dead one."""
    found = _claim(conn, job_id, seq)
    stale_s = settings.worker_dead_after_s - settings.worker_job_monitoring_interval_s
    return found is not None and found[1] == owner and time.time() - found[0] >= stale_s


def speak(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, job: Job, seq: int,
          text: str) -> Chunk | None:
    """Synthesize (speech cache first) and store one sentence. Never raises on input: a sentence that cannot
    be spoken is stored with an `error`. Returns the stored chunk (another process's if it got there first),
    or None when the job was cancelled or deleted meanwhile."""
    try:
        chunk = _synthesize(conn, settings, engines, job, seq, text)
    except StageError as exc:
        chunk = _failed(seq, text, exc.reason, exc.message)
    except Exception as exc:  # one bad sentence must not take the worker (or the other sentences) down
        log.exception("chunk synthesis crashed", extra={"job_id": job.id, "seq": seq})
        chunk = _failed(seq, text, "internal_error", f"{type(exc).__name__}: {exc}")
    return commit(conn, settings, job, chunk)


def _failed(seq: int, text: str, reason: str, message: str) -> Chunk:
    return Chunk(seq=seq, text=text, duration_s=0.0, error=ChunkError(reason=reason, message=message))


def _synthesize(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, job: Job, seq: int,
                text: str) -> Chunk:
    text = text.strip()
    opts = from_job(job, settings)
    routed = synth.route(engines, settings, text, language=opts.language, voice=opts.voice, engine=opts.engine)
    cacheable = settings.tts_cache_ttl_s > 0 and len(text) <= settings.tts_cache_max_chars
    start = time.perf_counter()
    cached = cache.get(conn, cache.key_for(routed.engine.name, routed.voice_name, opts.speed, text)) if cacheable \
        else None
    if cached is not None:
        wav, speech = cached[0], formats.read_wav(cached[0])
        speech.word_ends_s = cached[1]
        spoken: dict[str, Any] = {"engine": routed.engine.name, "voice": routed.voice_name, "language": routed.language,
                  "fallback": None, "cached": True, "synth_s": 0.0}
    else:
        result = _synthesize_now(conn, settings, engines, text, opts)
        speech, wav = result.speech, audio.to_wav(result.speech.pcm, result.speech.sample_rate)
        spoken = {"engine": result.engine, "voice": result.voice, "language": result.language,
                  "fallback": result.fallback, "cached": False, "synth_s": round(result.seconds, 4)}
        if cacheable:  # under the engine that actually spoke: a fallback's audio is not edge's
            cache.put(conn, cache.key_for(result.engine, result.voice, opts.speed, text), wav,
                      settings.tts_cache_ttl_s, speech.word_ends_s)
    metrics.inc(metrics.AUDIO_SECONDS, speech.duration_s, stage="tts")
    blob_id = RedisBlobStore(conn).put(wav, formats.CONTENT_TYPES["wav"], settings.blob_ttl_s,
                                       tenant=job.tenant)
    return Chunk.model_validate({"seq": seq, "blob_id": blob_id, "duration_s": round(speech.duration_s, 4),
                                 "sample_rate": speech.sample_rate, "text": text, **spoken,
                                 "word_ends_s": [round(t, 3) for t in speech.word_ends_s or []] or None,
                                 "ready_s": round(time.perf_counter() - start, 4)})


def _synthesize_now(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, text: str,
                    opts: SpeakOptions) -> synth.Synthesis:
    result = synth.synthesize(engines, settings, text, language=opts.language, voice=opts.voice,
                              engine=opts.engine, speed=opts.speed, conn=conn)
    if result.speech.duration_s <= 0:
        raise StageError("no_speech", "the sentence produced no audio (nothing pronounceable in it)")
    metrics.observe(metrics.RTF, result.seconds / result.speech.duration_s, stage="tts")
    metrics.inc(metrics.TTS_CHARS, len(text), engine=result.engine)
    return result


def event(job_id: str, chunk: Chunk) -> tuple[str, dict[str, Any]]:
    if chunk.error is not None:
        return "tts.chunk_failed", {"seq": chunk.seq, "text": chunk.text, **chunk.error.wire()}
    return "tts.chunk", {"seq": chunk.seq, "url": url(job_id, chunk.seq), "duration_s": chunk.duration_s,
                         "sample_rate": chunk.sample_rate, "text": chunk.text}


def commit(conn: redis.Redis, settings: TtsSettings, job: Job, chunk: Chunk) -> Chunk | None:
    """Store `chunk` unless the sentence is already stored (or the job is gone); announce what is now due.

    WATCH makes the check and the writes one step: a second copy of a sentence is refused, and the
    events leave in seq order (a sentence finished before its predecessors is announced with the last
    of them).
    """
    job_id, seq = job.id, chunk.seq
    key = jobs.key(job_id)

    def store(pipe: redis.client.Pipeline) -> tuple[Chunk | None, float | None]:
        existing, status, announced, ttfa = pipe.hmget(
            key, [keys.chunk_field(seq), keys.JOB_STATUS, keys.JOB_ANNOUNCED, keys.JOB_TTFA])
        if existing is not None or status is None or as_text(status) == JobStatus.CANCELLED:
            return (Chunk.model_validate_json(existing) if existing is not None else None), None
        due = _due(pipe, key, chunk, int(announced or 0))
        first_audio = ttfa is None and any(c.error is None for c in due)
        ttfa_s = time.time() - job.created_at
        pipe.multi()
        jobs.put_chunk(pipe, job_id, seq, chunk)
        for c in due:
            events.append(pipe, job_id, *event(job_id, c), settings.job_ttl_s)
        if due:
            pipe.hset(key, keys.JOB_ANNOUNCED, due[-1].seq + 1)
        if first_audio:
            pipe.hsetnx(key, keys.JOB_TTFA, ttfa_s)
        if chunk.error is None:
            jobs.add_cost(pipe, job_id, tts_characters=len(chunk.text))
            if chunk.cached:
                jobs.add_cost(pipe, job_id, speech_cache_hits=1)
        return chunk, (ttfa_s if first_audio else None)

    stored, ttfa_s = transaction(conn, store, key)
    if stored is not chunk:  # another process stored this sentence first, or the job is gone
        _discard(conn, chunk)
        return stored
    if ttfa_s is not None:
        metrics.observe(metrics.TTFA, ttfa_s, kind=job.kind, priority=job.priority)
    return chunk


def _due(pipe: redis.client.Pipeline, key: str, chunk: Chunk, announced: int) -> list[Chunk]:
    """The chunks to announce once `chunk` is stored: none while an earlier one is missing, else `chunk` and
    the run of later ones that were waiting for it."""
    if chunk.seq != announced:
        return []
    due = [chunk]
    while (raw := pipe.hget(key, keys.chunk_field(chunk.seq + len(due)))) is not None:
        due.append(Chunk.model_validate_json(raw))
    return due


def _discard(conn: redis.Redis, chunk: Chunk) -> None:
    if chunk.blob_id:
        RedisBlobStore(conn).delete(chunk.blob_id)


def produce(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, job_id: str, seq: int,
            text: str) -> Chunk | None:
    """One sentence from the queue (`shared.queues.CHUNK_TASK`): nothing for a finished, cancelled or deleted
    job, nothing if another process has claimed it; else speak and store it."""
    job = jobs.fetch(conn, job_id)
    if job is None or job.finished:
        log.info("skipping chunk of a finished job", extra={"job_id": job_id, "seq": seq})
        return None
    owner = queues.rq_job_id(job_id, f"tts{seq}")
    if not claim(conn, job_id, seq, owner):
        if not _abandoned_by(conn, settings, job_id, seq, owner) or jobs.get_chunk(conn, job_id, seq) is not None:
            return None  # another process has it, or it is done
        log.warning("re-running a sentence whose worker died", extra={"job_id": job_id, "seq": seq})
    attempts = conn.hincrby(jobs.key(job_id), keys.sentence_attempts_field(seq), 1)
    if attempts > settings.max_attempts("tts"):
        return commit(conn, settings, job, _failed(
            seq, text, "retry_budget_exhausted",
            f"speaking this sentence was started {attempts - 1} times and never finished (its worker died "
            f"each time); the budget is {settings.max_attempts('tts')}"))
    return speak(conn, settings, engines, job, seq, text)


def await_chunk(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, job: Job, seq: int,
                text: str) -> Chunk | None:
    """The stage's view of one sentence: stored → it; unclaimed → speak it now; claimed elsewhere → wait, up to
    `tts_chunk_wait_s` from the claim, then speak it here. None when the job is cancelled meanwhile."""
    job_id = job.id
    owner = queues.rq_job_id(job_id, "tts")
    while True:
        chunk = jobs.get_chunk(conn, job_id, seq)
        if chunk is not None:
            return chunk
        if jobs.status(conn, job_id) in (None, JobStatus.CANCELLED):
            return None
        if claim(conn, job_id, seq, owner):
            return speak(conn, settings, engines, job, seq, text)
        if _abandoned_by(conn, settings, job_id, seq, owner):  # an earlier run of this stage died on it
            return speak(conn, settings, engines, job, seq, text)
        found = _claim(conn, job_id, seq)
        if found is not None and time.time() - found[0] >= settings.tts_chunk_wait_s:
            log.warning("chunk claimer is late, speaking the sentence here", extra={"job_id": job_id, "seq": seq})
            return speak(conn, settings, engines, job, seq, text)
        time.sleep(settings.tts_chunk_poll_s)
