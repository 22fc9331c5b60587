"""Mandarin transcripts from the real ASR stage: Simplified for zh, Traditional for zh-TW, CER ≤ 0.10."""

from __future__ import annotations

import statistics
from pathlib import Path

import redis

from services.asr import tasks
from services.asr.config import AsrSettings
from services.gateway import subtitles
from shared import jobs, stage, textnorm
from shared.blobs import RedisBlobStore
from tests.asr.conftest import loaded, partials, transcribe
from tests.zh import simplified_only, traditional_only

CLIPS = ["zh/aishell1_BAC009S0724W0121.wav", "zh/aishell1_BAC009S0764W0121.wav", "zh/funasr_asr_example.wav"]


def test_zh_clips_are_simplified_within_cer(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                                            references: dict[str, dict[str, str]]) -> None:
    """The issue's bar: CER ≤ 0.10 over the three clips, and not one Traditional character anywhere.
    (Measured 0.081: 0.167, 0.077 and 0.0; whisper alone wrote 廣州市佛地產 for the first.)"""
    scores = []
    for clip in CLIPS:
        record = transcribe(conn, asr_settings, speech / clip, language="zh")
        result = record["results"]["asr"]
        assert result["language"] == "zh" and result["model"] == "base"
        said = [result["text"], *(s["text"] for s in result["segments"]),
                *(p["text"] for p in partials(conn, record["id"]))]
        assert not traditional_only("".join(said)), said
        scores.append(textnorm.cer(references[clip]["transcript"], result["text"]))
    assert statistics.mean(scores) <= 0.10, scores


def test_zh_cn_is_simplified_and_zh_tw_traditional(conn: redis.Redis, asr_settings: AsrSettings,
                                                    speech: Path) -> None:
    clip = speech / CLIPS[0]
    simplified = transcribe(conn, asr_settings, clip, language="zh-CN")["results"]["asr"]
    assert simplified["text"].startswith("广州市") and not traditional_only(simplified["text"])
    traditional = transcribe(conn, asr_settings, clip, language="zh-TW")["results"]["asr"]
    assert traditional["language"] == "zh"  # whisper was asked for zh; only the script differs
    assert traditional["text"].startswith("廣州市") and not simplified_only(traditional["text"])


def test_detected_mandarin_is_simplified(conn: redis.Redis, redis_url: str, speech: Path,
                                         references: dict[str, dict[str, str]]) -> None:
    settings = AsrSettings(redis_url=redis_url, asr_model="base")
    record = transcribe(conn, settings, speech / CLIPS[0])
    result = record["results"]["asr"]
    assert result["language"] == "zh" and result["text"].startswith("广州市")
    assert not traditional_only(result["text"] + "".join(p["text"] for p in partials(conn, record["id"])))


def test_as_is_keeps_whispers_own_mix(conn: redis.Redis, redis_url: str, speech: Path) -> None:
    """The setting is real: switched off, whisper's Traditional characters come through (廣州市佛地產…)."""
    settings = AsrSettings(redis_url=redis_url, asr_zh_script="as-is")
    result = transcribe(conn, settings, speech / CLIPS[0], language="zh")["results"]["asr"]
    assert traditional_only(result["text"]), result["text"]


def test_batch_priority_decode_and_subtitles_are_simplified(conn: redis.Redis, asr_settings: AsrSettings,
                                                             speech: Path,
                                                             references: dict[str, dict[str, str]]) -> None:
    """Recorded calls take the batched decode (VAD windows, asr_batch_size at once): same bar, and the
    SRT/VTT a batch exports are written from these segments."""
    scores = []
    for clip in CLIPS:
        blob_id = RedisBlobStore(conn).put((speech / clip).read_bytes(), "application/octet-stream", 600)
        job_id = jobs.create(conn, kind="transcription", priority="batch", inputs={"blob_id": blob_id},
                             options={"language": "zh"}, ttl_s=600)
        stage.run("asr", job_id, conn, asr_settings, tasks.work, loaded(asr_settings))
        record = jobs.load(conn, job_id)
        assert record is not None and record["status"] == "done", record
        result = record["results"]["asr"]
        assert result["batched"] is True
        for text in (result["text"], subtitles.srt(result["segments"]), subtitles.vtt(result["segments"])):
            assert text and not traditional_only(text), text
        scores.append(textnorm.cer(references[clip]["transcript"], result["text"]))
    assert statistics.mean(scores) <= 0.10, scores
