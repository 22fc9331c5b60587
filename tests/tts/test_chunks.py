"""Streamed replies: sentences spoken from the queue (claim and announce), claimed once, cached, joined by the stage."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
import redis

from services.tts import cache, claims, formats, synth, tasks
from services.tts.config import TtsSettings
from services.tts.engines.edge import EdgeEngine
from shared import audio, events, jobs, stage, textnorm
from shared.blobs import RedisBlobStore
from shared.jobs import Job
from tests.tts.conftest import make_settings, metric, transcribe
from tests.tts.fake_edge import FakeEdge, serve

REPLY = ["Your refund was approved this morning.",
         "The money will reach your account within five working days from now.",
         "Is there anything else at all that I can help you with today?"]
SENTENCE = "Thank you for calling, have a wonderful day."


def new_job(conn: redis.Redis, settings: TtsSettings, *, kind: str = "chat", text: str = "Where is my refund?",
            options: dict[str, Any] | None = None) -> str:
    return jobs.create(conn, kind=kind, priority="live", inputs={"text": text}, options=options or {},
                       ttl_s=settings.job_ttl_s)


def finish_llm(conn: redis.Redis, job_id: str, sentences: list[str] = REPLY) -> None:
    """What the LLM stage leaves once its stream ends: the text and every chunk it cut."""
    jobs.put_result(conn, job_id, "llm", {"text": " ".join(sentences), "language": None,
                                          "chunks": [{"seq": i, "text": s} for i, s in enumerate(sentences)]})


def produce(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, job_id: str, seq: int,
            text: str) -> dict[str, Any] | None:
    """`claims.produce`, its chunk as the record shows it."""
    chunk = claims.produce(conn, settings, engines, job_id, seq, text)
    return chunk.wire() if chunk is not None else None


def speak(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, job: dict[str, Any], seq: int,
          text: str) -> dict[str, Any] | None:
    """`claims.speak` for a record as `jobs.load` shows it."""
    chunk = claims.speak(conn, settings, engines, Job.from_wire(job), seq, text)
    return chunk.wire() if chunk is not None else None


def run_stage(conn: redis.Redis, settings: TtsSettings, engines: synth.Engines, job_id: str) -> dict[str, Any]:
    stage.run("tts", job_id, conn, settings, tasks.work, tasks.Resources(settings, engines, {}))
    record = jobs.load(conn, job_id)
    assert record is not None
    return record


def job_events(conn: redis.Redis, job_id: str, *types: str) -> list[tuple[str, dict[str, Any]]]:
    return [(t, d) for _, t, d in events.read(conn, job_id) if t in types]


def blob_bytes(conn: redis.Redis, blob_id: str) -> bytes:
    blob = RedisBlobStore(conn).get(blob_id)
    assert blob is not None, f"blob {blob_id} is missing"
    return blob[0]


def blob_count(conn: redis.Redis) -> int:
    return len(list(conn.scan_iter("vq:blob:*")))


def synth_counts() -> tuple[float, float]:
    """Engine calls, seen from outside: RTF observations and characters synthesized (both once per synthesis)."""
    return (metric("voicequeue_realtime_factor_count", stage="tts"),
            metric("voicequeue_tts_characters_total", engine="piper"))


def assert_reply(conn: redis.Redis, record: dict[str, Any], sentences: list[str], whisper: Any) -> None:
    """Done; chunks in order; the full WAV decodes to the sum of the chunk durations and says the reply."""
    assert record["status"] == "done", record["error"]
    result = record["results"]["tts"]
    assert [c["seq"] for c in result["chunks"]] == list(range(len(sentences)))
    assert [c["text"] for c in result["chunks"]] == sentences
    total = sum(c["duration_s"] for c in result["chunks"])
    assert result["duration_s"] == pytest.approx(total, abs=0.001)
    data = blob_bytes(conn, result["blob_id"])
    info = audio.probe(data)
    assert info.container == "wav" and info.sample_rate == result["sample_rate"]
    assert info.duration_s == pytest.approx(total, abs=0.001 * len(sentences))
    heard = transcribe(whisper, formats.read_wav(data), "en")
    assert textnorm.wer(" ".join(sentences), heard) < 0.2, heard
    tts_events = job_events(conn, record["id"], "tts.chunk")
    assert [d["seq"] for _, d in tts_events] == list(range(len(sentences)))
    for (_, data_), chunk in zip(tts_events, result["chunks"], strict=True):
        assert data_["url"] == f"/v1/jobs/{record['id']}/chunks/{chunk['seq']}"
        assert data_["duration_s"] == chunk["duration_s"] > 0.5 and data_["sample_rate"] == 22050
        assert audio.probe(blob_bytes(conn, chunk["blob_id"])).duration_s == pytest.approx(chunk["duration_s"],
                                                                                          abs=0.001)
    assert record["cost"]["tts_characters"] == sum(len(s) for s in sentences)


def test_queued_chunks_then_the_stage_joins_them(conn: redis.Redis, local_engines: synth.Engines,
                                                 whisper_tiny: Any) -> None:
    settings = make_settings()
    ttfa_before = metric("voicequeue_ttfa_seconds_count", kind="chat", priority="live")
    job_id = new_job(conn, settings)
    timings, first_ttfa = [], None
    for seq, sentence in enumerate(REPLY):  # as the LLM streams: the tts worker speaks each sentence
        start = time.perf_counter()
        chunk = produce(conn, settings, local_engines, job_id, seq, sentence)
        timings.append(time.perf_counter() - start)
        assert chunk is not None and chunk["engine"] == "piper" and not chunk["cached"]
        if seq == 0:
            first = jobs.load(conn, job_id)
            assert first is not None and first["ttfa_s"] is not None and 0 < first["ttfa_s"] < 5
            first_ttfa = first["ttfa_s"]
    print(f"chunk synthesis (s): {[round(t, 3) for t in timings]}")
    assert len(job_events(conn, job_id, "tts.chunk")) == 3  # before the stage even starts
    finish_llm(conn, job_id)
    before = synth_counts()
    record = run_stage(conn, settings, local_engines, job_id)
    assert synth_counts() == before, "the stage re-synthesized sentences that were already spoken"
    assert_reply(conn, record, REPLY, whisper_tiny)
    assert [c["blob_id"] for c in record["results"]["tts"]["chunks"]] == [c["blob_id"] for c in record["chunks"]]
    # TTFA: observed once, for the first sentence; the stored value is the first one.
    assert metric("voicequeue_ttfa_seconds_count", kind="chat", priority="live") == ttfa_before + 1
    assert record["ttfa_s"] == first_ttfa


@pytest.mark.parametrize("kind", ["chat", "speech"])
def test_the_stage_speaks_every_sentence_when_nothing_was_streamed(conn: redis.Redis, local_engines: synth.Engines,
                                                                   whisper_tiny: Any, kind: str) -> None:
    settings = make_settings()
    ttfa_before = metric("voicequeue_ttfa_seconds_count", kind=kind, priority="live")
    job_id = new_job(conn, settings, kind=kind, text=" ".join(REPLY), options={"stream": False})
    if kind == "chat":
        finish_llm(conn, job_id)
    before = synth_counts()
    record = run_stage(conn, settings, local_engines, job_id)
    # A speech job's text is cut the way the LLM cuts a reply: the same three sentences.
    assert_reply(conn, record, REPLY, whisper_tiny)
    assert synth_counts()[0] == before[0] + 3
    assert synth_counts()[1] == before[1] + sum(len(s) for s in REPLY)
    assert record["ttfa_s"] is not None
    assert metric("voicequeue_ttfa_seconds_count", kind=kind, priority="live") == ttfa_before + 1


def test_one_sentence_is_spoken_once_however_many_claim_it(conn: redis.Redis, local_engines: synth.Engines) -> None:
    settings = make_settings()
    job_id = new_job(conn, settings)
    before = synth_counts()
    barrier = threading.Barrier(2)
    outcomes: list[dict[str, Any] | None] = []

    def deliver() -> None:  # rq retried or delivered the same sentence twice
        barrier.wait()
        outcomes.append(produce(conn, settings, local_engines, job_id, 0, REPLY[0]))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o is None for o in outcomes) == [False, True]
    assert synth_counts() == (before[0] + 1, before[1] + len(REPLY[0]))
    record = jobs.load(conn, job_id)
    assert record is not None and [c["seq"] for c in record["chunks"]] == [0]
    assert len(job_events(conn, job_id, "tts.chunk")) == 1
    assert blob_count(conn) == 1
    assert record["cost"]["tts_characters"] == len(REPLY[0])


def test_events_leave_in_order_when_sentences_finish_out_of_order(conn: redis.Redis,
                                                                  local_engines: synth.Engines) -> None:
    settings = make_settings()
    job_id = new_job(conn, settings)
    assert produce(conn, settings, local_engines, job_id, 2, REPLY[2]) is not None
    assert produce(conn, settings, local_engines, job_id, 1, REPLY[1]) is not None
    assert job_events(conn, job_id, "tts.chunk") == [], "a later sentence must not be announced before seq 0"
    assert jobs.load(conn, job_id)["ttfa_s"] is None  # type: ignore[index]
    assert produce(conn, settings, local_engines, job_id, 0, REPLY[0]) is not None
    assert [d["seq"] for _, d in job_events(conn, job_id, "tts.chunk")] == [0, 1, 2]


def test_the_stage_waits_for_a_sentence_claimed_elsewhere(conn: redis.Redis, local_engines: synth.Engines) -> None:
    settings = make_settings(tts_chunk_wait_s=30)
    job_id = new_job(conn, settings)
    assert claims.claim(conn, job_id, 1)  # another worker took sentence 1 and is slow with it
    finish_llm(conn, job_id, REPLY[:2])
    done: list[dict[str, Any]] = []
    runner = threading.Thread(target=lambda: done.append(run_stage(conn, settings, local_engines, job_id)))
    runner.start()
    time.sleep(1.0)
    assert runner.is_alive() and not done, "the stage must wait for the claimed sentence"
    assert [d["seq"] for _, d in job_events(conn, job_id, "tts.chunk")] == [0]  # it spoke the unclaimed one
    job = jobs.load(conn, job_id)
    assert job is not None
    landed = speak(conn, settings, local_engines, job, 1, REPLY[1])  # the slow worker finishes
    runner.join(30)
    assert done and done[0]["status"] == "done", done and done[0]["error"]
    result = done[0]["results"]["tts"]
    assert landed is not None and result["chunks"][1]["blob_id"] == landed["blob_id"]
    assert [d["seq"] for _, d in job_events(conn, job_id, "tts.chunk")] == [0, 1]
    assert result["duration_s"] == pytest.approx(sum(c["duration_s"] for c in result["chunks"]), abs=0.001)


def test_the_stage_speaks_a_sentence_whose_claimer_died(conn: redis.Redis, local_engines: synth.Engines) -> None:
    settings = make_settings(tts_chunk_wait_s=0.5)
    job_id = new_job(conn, settings)
    assert claims.claim(conn, job_id, 1)  # …and that worker never comes back
    finish_llm(conn, job_id, REPLY[:2])
    start = time.monotonic()
    record = run_stage(conn, settings, local_engines, job_id)
    assert 0.5 <= time.monotonic() - start < 10
    assert record["status"] == "done", record["error"]
    assert [c["seq"] for c in record["results"]["tts"]["chunks"]] == [0, 1]
    blobs_before = blob_count(conn)
    # The claimer turns up after all: its copy is refused, its blob dropped, nothing announced twice.
    late = speak(conn, settings, local_engines, record, 1, REPLY[1])
    assert late is not None and late["blob_id"] == record["results"]["tts"]["chunks"][1]["blob_id"]
    assert blob_count(conn) == blobs_before
    assert [d["seq"] for _, d in job_events(conn, job_id, "tts.chunk")] == [0, 1]


def test_speech_cache_serves_a_repeated_sentence_without_synthesis(conn: redis.Redis,
                                                                   local_engines: synth.Engines) -> None:
    settings = make_settings()
    hits, misses = (metric("voicequeue_cache_hits_total", cache="speech"),
                    metric("voicequeue_cache_misses_total", cache="speech"))
    first_job, second_job = new_job(conn, settings), new_job(conn, settings)
    first = produce(conn, settings, local_engines, first_job, 0, SENTENCE)
    before = synth_counts()
    second = produce(conn, settings, local_engines, second_job, 0, f"  {SENTENCE}")
    assert first is not None and second is not None
    assert synth_counts() == before, "a cached sentence must not reach the engine"
    assert not first["cached"] and second["cached"] and second["synth_s"] == 0.0
    assert metric("voicequeue_cache_hits_total", cache="speech") == hits + 1
    assert metric("voicequeue_cache_misses_total", cache="speech") == misses + 1
    assert blob_bytes(conn, second["blob_id"]) == blob_bytes(conn, first["blob_id"])
    # Each word's end time comes with the audio, from the cache too (a live call places a barge-in's cut by them).
    assert len(first["word_ends_s"]) == len(SENTENCE.split()) and second["word_ends_s"] == first["word_ends_s"]
    assert first["word_ends_s"][-1] == pytest.approx(first["duration_s"], abs=0.01)
    assert second["duration_s"] == first["duration_s"] and second["engine"] == "piper"
    print(f"sentence: synthesis {first['ready_s']:.3f} s, cache hit {second['ready_s']:.4f} s")
    assert second["ready_s"] < first["synth_s"] / 5
    second_record = jobs.load(conn, second_job)
    assert second_record is not None and second_record["cost"] == {"tts_characters": len(SENTENCE),
                                                                   "speech_cache_hits": 1.0}
    # The key covers the speed: the same words faster are new audio.
    faster = new_job(conn, settings, options={"speed": 1.5})
    fast = produce(conn, settings, local_engines, faster, 0, SENTENCE)
    assert fast is not None and not fast["cached"] and fast["duration_s"] < first["duration_s"] * 0.9


def test_speech_cache_entries_expire(conn: redis.Redis, local_engines: synth.Engines) -> None:
    settings = make_settings(tts_cache_ttl_s=1)
    assert produce(conn, settings, local_engines, new_job(conn, settings), 0, SENTENCE) is not None
    assert local_engines.piper is not None
    key = cache.key_for("piper", local_engines.piper.voice, 1.0, SENTENCE)
    assert 0 < conn.pttl(key) <= 1000 and 0 < conn.pttl(key + cache.WORDS) <= 1000
    assert produce(conn, settings, local_engines, new_job(conn, settings), 0, SENTENCE)["cached"]  # type: ignore[index]
    time.sleep(1.1)
    again = produce(conn, settings, local_engines, new_job(conn, settings), 0, SENTENCE)
    assert again is not None and not again["cached"]
    off = make_settings(tts_cache_ttl_s=0)
    conn.flushdb()
    produce(conn, off, local_engines, new_job(conn, off), 0, SENTENCE)
    assert list(conn.scan_iter(f"{cache.PREFIX}*")) == []


@pytest.mark.parametrize("end", ["cancelled", "deleted", "failed"])
def test_a_sentence_of_an_ended_job_is_not_spoken(conn: redis.Redis, local_engines: synth.Engines, end: str) -> None:
    settings = make_settings()
    job_id = new_job(conn, settings)
    if end == "deleted":
        conn.delete(jobs.key(job_id))
    else:
        jobs.put_status(conn, job_id, end)
    before = synth_counts()
    assert produce(conn, settings, local_engines, job_id, 0, REPLY[0]) is None
    assert synth_counts() == before
    assert job_events(conn, job_id, "tts.chunk", "tts.chunk_failed") == []
    assert blob_count(conn) == 0
    if end == "deleted":
        assert not conn.exists(jobs.key(job_id)), "a late sentence must not resurrect a deleted job"
    else:
        assert conn.hget(jobs.key(job_id), "chunk:0") is None and conn.hget(jobs.key(job_id), "claim:tts:0") is None


def test_a_job_cancelled_while_a_sentence_is_spoken_keeps_nothing(conn: redis.Redis,
                                                                  local_engines: synth.Engines) -> None:
    settings = make_settings()
    job_id = new_job(conn, settings)
    job = jobs.load(conn, job_id)
    assert job is not None and claims.claim(conn, job_id, 0)
    jobs.put_status(conn, job_id, "cancelled")  # barge-in between claim and store
    assert speak(conn, settings, local_engines, job, 0, REPLY[0]) is None
    assert blob_count(conn) == 0 and job_events(conn, job_id, "tts.chunk") == []


def test_a_sentence_that_cannot_be_spoken_is_recorded_not_raised(conn: redis.Redis,
                                                                 local_engines: synth.Engines) -> None:
    settings = make_settings()
    job_id = new_job(conn, settings, options={"voice": "nobody"})
    chunk = produce(conn, settings, local_engines, job_id, 0, REPLY[0])
    assert chunk is not None and chunk["error"]["reason"] == "unknown_voice" and "nobody" in chunk["error"]["message"]
    assert job_events(conn, job_id, "tts.chunk_failed") == [
        ("tts.chunk_failed", {"seq": 0, "text": REPLY[0], **chunk["error"]})]
    finish_llm(conn, job_id, REPLY[:1])
    record = run_stage(conn, settings, local_engines, job_id)
    assert record["status"] == "failed" and record["error"]["reason"] == "unknown_voice"


def test_a_silent_sentence_is_skipped(conn: redis.Redis, local_engines: synth.Engines) -> None:
    settings = make_settings()
    job_id = new_job(conn, settings)
    finish_llm(conn, job_id, [REPLY[0], "…", REPLY[2]])
    record = run_stage(conn, settings, local_engines, job_id)
    assert record["status"] == "done", record["error"]
    result = record["results"]["tts"]
    assert [c["seq"] for c in result["chunks"]] == [0, 1, 2] and result["chunks"][1]["error"]["reason"] == "no_speech"
    assert [d["seq"] for _, d in job_events(conn, job_id, "tts.chunk")] == [0, 2]
    assert [d["seq"] for _, d in job_events(conn, job_id, "tts.chunk_failed")] == [1]
    info = audio.probe(blob_bytes(conn, result["blob_id"]))
    assert info.duration_s == pytest.approx(result["chunks"][0]["duration_s"] + result["chunks"][2]["duration_s"],
                                            abs=0.002)


def test_sentences_at_different_sample_rates_join_resampled(conn: redis.Redis, local_engines: synth.Engines,
                                                           whisper_tiny: Any) -> None:
    """edge-tts speaks sentence 0 at 24 kHz, then fails; piper (22.05 kHz) speaks sentence 1."""
    assert local_engines.piper is not None
    reference = local_engines.piper.synthesize(REPLY[0], voice=None, language="en", speed=1.0)
    with serve(FakeEdge(mp3=formats.encode(reference, "mp3"))) as fake:
        settings = make_settings(tts_edge_url=fake.url)
        engines = dataclasses.replace(local_engines, edge=EdgeEngine(settings))
        job_id = new_job(conn, settings, options={"voice": "en-US-AriaNeural"})
        first = produce(conn, settings, engines, job_id, 0, REPLY[0])
        fake.mode = "unavailable"
        second = produce(conn, settings, engines, job_id, 1, REPLY[1])
    assert first is not None and second is not None
    assert (first["engine"], first["sample_rate"]) == ("edge", 24000)
    assert (second["engine"], second["sample_rate"], second["fallback"]["from"]) == ("piper", 22050, "edge")
    finish_llm(conn, job_id, REPLY[:2])
    record = run_stage(conn, settings, engines, job_id)
    assert record["status"] == "done", record["error"]
    result = record["results"]["tts"]
    assert result["sample_rate"] == 24000 and result["fallback"]["to"] == "piper"
    total = first["duration_s"] + second["duration_s"]
    assert result["duration_s"] == pytest.approx(total, abs=0.001)
    data = blob_bytes(conn, result["blob_id"])
    info = audio.probe(data)
    assert info.sample_rate == 24000 and info.duration_s == pytest.approx(total, abs=0.002)
    heard = transcribe(whisper_tiny, formats.read_wav(data), "en")
    assert textnorm.wer(" ".join(REPLY[:2]), heard) < 0.2, heard
