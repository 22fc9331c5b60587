"""The sentences of a streamed reply: each spoken once, stored, and announced in order.

The LLM enqueues one `run_chunk` per sentence while it is still writing, and
the job's `tts` stage comes after it. Whoever gets to a sentence first claims
it (HSETNX `claim:tts:<seq>` on the job hash) and speaks it; the stage waits
for sentences claimed elsewhere, and speaks one itself when its claimer takes
longer than `tts_chunk_wait_s` (the claimer may have died). A claim names its
claimer (the rq job), so when that very job runs again after its worker died (the
claim is older than a worker takes to be declared dead) it takes the sentence up
again, within the stage's retry budget. Storing a sentence
is one optimistic transaction that refuses a second copy, so a late claimer
cannot duplicate it, and that announces `tts.chunk` events strictly in
sequence order even when several workers finish out of order.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from services.tts import cache, formats, synth
from services.tts.config import TtsSettings
from services.tts.options import SpeakOptions, from_job
from shared import audio, events, jobs, metrics, queues
from shared.blobs import RedisBlobStore
from shared.stage import StageError

log = logging.getLogger(__name__)

ANNOUNCED = "tts:announced"  # the next seq whose event is due


def claim_field(seq: int) -> str:
    return f"claim:tts:{seq}"


def url(job_id: str, seq: int) -> str:
    return f"/v1/jobs/{job_id}/chunks/{seq}"


def claim(conn: redis.Redis, job_id: str, seq: int, owner: str = "") -> bool:
    """Take the sentence for `owner` (an rq job id); the value is "<claim time> <owner>", so a waiter can
    tell a stale claim and a re-run of the owner its own."""
    return bool(conn.hsetnx(jobs.key(job_id), claim_field(seq), f"{time.time()} {owner}".strip()))


def _claim(conn: redis.Redis, job_id: str, seq: int) -> tuple[float, str] | None:
    value = conn.hget(jobs.key(job_id), claim_field(seq))
    if value is None:
        return None
    at, _, owner = (value.decode() if isinstance(value, bytes) else str(value)).partition(" ")
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


def get(conn: redis.Redis, job_id: str, seq: int) -> dict[str, Any] | None:
    value = conn.hget(jobs.key(job_id), f"chunk:{seq}")
    return json.loads(value) if value is not None else None


def speak(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, job: dict[str, Any], seq: int,
          text: str) -> dict[str, Any] | None:
    """Synthesize (speech cache first) and store one sentence. Never raises on input: a sentence that cannot
    be spoken is stored with an `error`. Returns the stored chunk (another process's if it got there first),
    or None when the job was cancelled or deleted meanwhile."""
    try:
        chunk = _synthesize(conn, settings, engines, job, seq, text)
    except StageError as exc:
        chunk = _failed(seq, text, exc.reason, exc.message)
    except Exception as exc:  # one bad sentence must not take the worker (or the other sentences) down
        log.exception("chunk synthesis crashed", extra={"job_id": job["id"], "seq": seq})
        chunk = _failed(seq, text, "internal_error", f"{type(exc).__name__}: {exc}")
    return commit(conn, settings, job, chunk)


def _failed(seq: int, text: str, reason: str, message: str) -> dict[str, Any]:
    return {"seq": seq, "text": text, "duration_s": 0.0, "error": {"reason": reason, "message": message}}


def _synthesize(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, job: dict[str, Any], seq: int,
                text: str) -> dict[str, Any]:
    text = text.strip()
    opts = from_job(job, settings)
    routed = synth.route(engines, settings, text, language=opts.language, voice=opts.voice, engine=opts.engine)
    cacheable = settings.tts_cache_ttl_s > 0 and len(text) <= settings.tts_cache_max_chars
    start = time.perf_counter()
    wav = cache.get(conn, cache.key_for(routed.engine.name, routed.voice_name, opts.speed, text)) if cacheable \
        else None
    if wav is not None:
        speech = formats.read_wav(wav)
        spoken: dict[str, Any] = {"engine": routed.engine.name, "voice": routed.voice_name, "language": routed.language,
                  "fallback": None, "cached": True, "synth_s": 0.0}
    else:
        result = _synthesize_now(conn, settings, engines, text, opts)
        speech, wav = result.speech, audio.to_wav(result.speech.pcm, result.speech.sample_rate)
        spoken = {"engine": result.engine, "voice": result.voice, "language": result.language,
                  "fallback": result.fallback, "cached": False, "synth_s": round(result.seconds, 4)}
        if cacheable:  # under the engine that actually spoke: a fallback's audio is not edge's
            cache.put(conn, cache.key_for(result.engine, result.voice, opts.speed, text), wav,
                      settings.tts_cache_ttl_s)
    metrics.inc(metrics.AUDIO_SECONDS, speech.duration_s, stage="tts")
    blob_id = RedisBlobStore(conn).put(wav, formats.CONTENT_TYPES["wav"], settings.blob_ttl_s,
                                       tenant=job["tenant"])
    return {"seq": seq, "blob_id": blob_id, "duration_s": round(speech.duration_s, 4),
            "sample_rate": speech.sample_rate, "text": text, **spoken,
            "ready_s": round(time.perf_counter() - start, 4)}


def _synthesize_now(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, text: str,
                    opts: SpeakOptions) -> synth.Synthesis:
    result = synth.synthesize(engines, settings, text, language=opts.language, voice=opts.voice,
                              engine=opts.engine, speed=opts.speed, conn=conn)
    if result.speech.duration_s <= 0:
        raise StageError("no_speech", "the sentence produced no audio (nothing pronounceable in it)")
    metrics.observe(metrics.RTF, result.seconds / result.speech.duration_s, stage="tts")
    metrics.inc(metrics.TTS_CHARS, len(text), engine=result.engine)
    return result


def event(job_id: str, chunk: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    seq = int(chunk["seq"])
    if chunk.get("error"):
        return "tts.chunk_failed", {"seq": seq, "text": chunk["text"], **chunk["error"]}
    return "tts.chunk", {"seq": seq, "url": url(job_id, seq), "duration_s": chunk["duration_s"],
                         "sample_rate": chunk["sample_rate"], "text": chunk["text"]}


def commit(conn: redis.Redis, settings: TtsSettings, job: dict[str, Any], chunk: dict[str, Any]
           ) -> dict[str, Any] | None:
    """Store `chunk` unless the sentence is already stored (or the job is gone); announce what is now due.

    WATCH makes the check and the writes one step: a second copy of a sentence is refused, and the
    events leave in seq order (a sentence finished before its predecessors is announced with the last
    of them).
    """
    job_id, seq = str(job["id"]), int(chunk["seq"])
    key, field = jobs.key(job_id), f"chunk:{seq}"
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                existing, status, announced, ttfa = pipe.hmget(key, [field, "status", ANNOUNCED, "ttfa_s"])
                if existing is not None or status is None or status in (b"cancelled", "cancelled"):
                    pipe.unwatch()
                    _discard(conn, chunk)
                    return json.loads(existing) if existing is not None else None
                due = _due(pipe, key, chunk, int(announced or 0))
                first_audio = next((c for c in due if not c.get("error")), None) if ttfa is None else None
                ttfa_s = time.time() - float(job["created_at"])
                pipe.multi()
                jobs.put_chunk(pipe, job_id, seq, chunk)
                for c in due:
                    events.append(pipe, job_id, *event(job_id, c), settings.job_ttl_s)
                if due:
                    pipe.hset(key, ANNOUNCED, int(due[-1]["seq"]) + 1)
                if first_audio is not None:
                    pipe.hsetnx(key, "ttfa_s", ttfa_s)
                if not chunk.get("error"):
                    jobs.add_cost(pipe, job_id, tts_characters=len(chunk["text"]))
                    if chunk.get("cached"):
                        jobs.add_cost(pipe, job_id, speech_cache_hits=1)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    if first_audio is not None:
        metrics.observe(metrics.TTFA, ttfa_s, kind=str(job["kind"]), priority=str(job["priority"]))
    return chunk


def _due(pipe: redis.client.Pipeline, key: str, chunk: dict[str, Any], announced: int) -> list[dict[str, Any]]:
    """The chunks to announce once `chunk` is stored: none while an earlier one is missing, else `chunk` and
    the run of later ones that were waiting for it."""
    seq = int(chunk["seq"])
    if seq != announced:
        return []
    due = [chunk]
    while (raw := pipe.hget(key, f"chunk:{seq + len(due)}")) is not None:
        due.append(json.loads(raw))
    return due


def _discard(conn: redis.Redis, chunk: dict[str, Any]) -> None:
    if chunk.get("blob_id"):
        RedisBlobStore(conn).delete(chunk["blob_id"])


def produce(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, job_id: str, seq: int,
            text: str) -> dict[str, Any] | None:
    """One sentence from the queue (`run_chunk`): nothing for a finished, cancelled or deleted job, nothing if
    another process has claimed it; else speak and store it."""
    job = jobs.load(conn, job_id)
    if job is None or job["status"] in jobs.TERMINAL_STATUSES:
        log.info("skipping chunk of a finished job", extra={"job_id": job_id, "seq": seq})
        return None
    owner = queues.rq_job_id(job_id, f"tts{seq}")
    if not claim(conn, job_id, seq, owner):
        if not _abandoned_by(conn, settings, job_id, seq, owner) or get(conn, job_id, seq) is not None:
            return None  # another process has it, or it is done
        log.warning("re-running a sentence whose worker died", extra={"job_id": job_id, "seq": seq})
    attempts = conn.hincrby(jobs.key(job_id), f"attempts:tts:{seq}", 1)
    if attempts > settings.max_attempts("tts"):
        return commit(conn, settings, job, _failed(
            seq, text, "retry_budget_exhausted",
            f"speaking this sentence was started {attempts - 1} times and never finished (its worker died "
            f"each time); the budget is {settings.max_attempts('tts')}"))
    return speak(conn, settings, engines, job, seq, text)


def await_chunk(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, job: dict[str, Any], seq: int,
                text: str) -> dict[str, Any] | None:
    """The stage's view of one sentence: stored → it; unclaimed → speak it now; claimed elsewhere → wait, up to
    `tts_chunk_wait_s` from the claim, then speak it here. None when the job is cancelled meanwhile."""
    job_id = str(job["id"])
    owner = queues.rq_job_id(job_id, "tts")
    while True:
        chunk = get(conn, job_id, seq)
        if chunk is not None:
            return chunk
        if jobs.status(conn, job_id) in (None, "cancelled"):
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
