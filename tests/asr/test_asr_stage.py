"""The ASR stage on real speech, in-process against a real Redis: accuracy, parity with raw faster-whisper,
language routing, events, metrics and failures."""

from __future__ import annotations

import io
import re
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from faster_whisper import WhisperModel

from services.asr import channels, script, tasks
from services.asr.config import AsrSettings
from services.gateway import subtitles
from shared import audio, events, jobs, models, stage, textnorm
from tests.asr.conftest import loaded, metric, partials, submit, transcribe

JFK = "en_short/jfk.flac"
PHONE = "telephone/LDC93S1_pcms16le_1_8000.wav"
STEREO = "en_short/fw_stereo_diarization.wav"
ZH_AISHELL = "zh/aishell1_BAC009S0724W0121.wav"
ZH_FUNASR = "zh/funasr_asr_example.wav"
LONG = "long/silero_aepyx_8k.wav"  # 169 s, six 30 s windows after VAD
CALL = "long/mfa_michaelandsickmichael.wav"  # 52 s, one talker on the left channel, then one on the right


@pytest.fixture(scope="module")
def raw_models(asr_settings: AsrSettings) -> dict[str, WhisperModel]:
    """faster-whisper used directly, as a user of the library would, with the stage's model settings."""
    return {
        name: WhisperModel(str(models.whisper_ct2(name, asr_settings.models_dir)), device="cpu",
                           compute_type=asr_settings.asr_compute_type, cpu_threads=asr_settings.asr_cpu_threads)
        for name in ("tiny.en", "base")
    }


def test_jfk_transcript_segments_events_and_metrics(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                                                    references: dict[str, dict[str, str]]) -> None:
    audio_before = metric("voicequeue_audio_seconds_total", stage="asr")
    rtf_before = metric("voicequeue_realtime_factor_count", stage="asr")
    record = transcribe(conn, asr_settings, speech / JFK)
    assert record["status"] == "done", record["error"]
    result = record["results"]["asr"]

    # Two identical channels: one down-mixed transcription, no speakers.
    assert channels.channel_count((speech / JFK).read_bytes()) == 2
    assert result["channels"] == 1 and "speakers" not in result
    assert all(s["speaker"] is None and s["channel"] is None for s in result["segments"])
    assert textnorm.wer(references[JFK]["transcript"], result["text"]) <= 0.10
    assert result["language"] == "en" and result["engine"] == "faster-whisper" and result["model"] == "tiny.en"
    assert result["duration_s"] == pytest.approx(11.0, abs=0.01)
    assert result["low_confidence"] is False
    assert 0 < result["rtf"] < 1.5
    segments = result["segments"]
    assert segments
    for prev, seg in zip([None, *segments], segments, strict=False):
        assert 0 <= seg["start"] < seg["end"] <= result["duration_s"] + 0.02
        if prev is not None:
            assert seg["start"] >= prev["end"] - 0.001
        assert seg["low_confidence"] is False and seg["avg_logprob"] > -1.0

    # One partial per segment, in order, carrying the same text.
    sent = partials(conn, record["id"])
    assert [p["index"] for p in sent] == list(range(len(segments)))
    assert [p["text"] for p in sent] == [s["text"] for s in segments]

    assert metric("voicequeue_audio_seconds_total", stage="asr") - audio_before == pytest.approx(11.0, abs=0.01)
    assert metric("voicequeue_realtime_factor_count", stage="asr") - rtf_before == 1


@pytest.mark.parametrize(("clip", "language", "model"), [
    (JFK, "en", "tiny.en"),
    (PHONE, "en", "tiny.en"),
    (ZH_FUNASR, "zh", "base"),
])
def test_transcript_equals_raw_faster_whisper(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                                              references: dict[str, dict[str, str]],
                                              raw_models: dict[str, WhisperModel],
                                              clip: str, language: str, model: str) -> None:
    """The quality bar: decoding, resampling and down-mixing in the stage cost no accuracy at all.
    (jfk.flac has two identical channels: it must stay one down-mixed transcription.)"""
    result = transcribe(conn, asr_settings, speech / clip, language=language)["results"]["asr"]
    prompt = asr_settings.asr_language_prompts.get(language)
    pieces, info = raw_models[model].transcribe(str(speech / clip), language=language,
                                                beam_size=tasks.beam_size(asr_settings, language),
                                                vad_filter=asr_settings.asr_vad, initial_prompt=prompt)
    raw = list(pieces)
    for piece in raw:  # the stage writes Mandarin in Simplified characters: so does the reference decode
        piece.text = script.convert(piece.text, script.conversion(language, language))
    assert result["model"] == model
    assert result["text"] == "".join(s.text for s in raw).strip()
    assert [(s["start"], s["end"]) for s in result["segments"]] == [(round(s.start, 3), round(s.end, 3))
                                                                    for s in raw]
    assert result["duration_s"] == pytest.approx(info.duration, abs=0.001)
    reference = references[clip]["transcript"]
    score = textnorm.cer if language == "zh" else textnorm.wer
    assert score(reference, result["text"]) == score(reference, "".join(s.text for s in raw))


def test_telephone_error_rate(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                              references: dict[str, dict[str, str]]) -> None:
    # Measured with tiny.en int8 beam 5: 0.18 ("dark suit in" → "dog suit and"), the same as the 16 kHz
    # original of this clip.
    result = transcribe(conn, asr_settings, speech / PHONE, language="en")["results"]["asr"]
    assert textnorm.wer(references[PHONE]["transcript"], result["text"]) <= 0.30
    assert result["duration_s"] == pytest.approx(float(references[PHONE]["duration_s"]), abs=0.01)


@pytest.mark.parametrize("clip", [ZH_AISHELL, ZH_FUNASR])
def test_mandarin_uses_the_multilingual_model(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                                              references: dict[str, dict[str, str]], clip: str) -> None:
    result = transcribe(conn, asr_settings, speech / clip, language="zh-CN")["results"]["asr"]
    assert result["model"] == asr_settings.asr_multilingual_model == "base"
    assert result["language"] == "zh"
    assert textnorm.cer(references[clip]["transcript"], result["text"]) <= 0.35


def test_no_language_with_an_english_only_model_means_english(conn: redis.Redis, asr_settings: AsrSettings,
                                                              speech: Path) -> None:
    result = transcribe(conn, asr_settings, speech / "en_short/sr_english.wav")["results"]["asr"]
    assert result["language"] == "en" and result["model"] == "tiny.en"
    assert result["language_probability"] == 1.0
    assert textnorm.normalize(result["text"]) == "1 2 3"


def test_multilingual_model_detects_the_language(conn: redis.Redis, redis_url: str, speech: Path,
                                                 references: dict[str, dict[str, str]]) -> None:
    settings = AsrSettings(redis_url=redis_url, asr_model="base")
    result = transcribe(conn, settings, speech / ZH_FUNASR)["results"]["asr"]
    assert result["model"] == "base" and result["language"] == "zh"
    assert result["language_probability"] > 0.5
    assert textnorm.cer(references[ZH_FUNASR]["transcript"], result["text"]) <= 0.35


def test_silence_is_an_empty_low_confidence_transcript(conn: redis.Redis, asr_settings: AsrSettings) -> None:
    record = transcribe_bytes(conn, asr_settings, audio.to_wav(np.zeros(3 * 16000, dtype=np.int16), 16000))
    assert record["status"] == "done"
    result = record["results"]["asr"]
    assert result["text"] == "" and result["segments"] == []
    assert result["low_confidence"] is True
    assert result["duration_s"] == pytest.approx(3.0)


def transcribe_bytes(conn: redis.Redis, settings: AsrSettings, data: bytes, **options: Any) -> dict[str, Any]:
    job_id = submit(conn, data, **options)
    stage.run("asr", job_id, conn, settings, tasks.work, loaded(settings))
    record = jobs.load(conn, job_id)
    assert record is not None
    return record


@pytest.mark.parametrize(("data", "reason", "words"), [
    (b"", "empty_file", "empty"),
    (b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 20, "not_audio", "not a recognised audio format"),
    (b"\x00\x01\x02\x03" * 4000, "not_audio", "not a recognised audio format"),
])
def test_bad_audio_fails_the_job_with_a_reason(conn: redis.Redis, asr_settings: AsrSettings, data: bytes,
                                               reason: str, words: str) -> None:
    failed_before = metric("voicequeue_jobs_total", stage="asr", outcome="failed")
    record = transcribe_bytes(conn, asr_settings, data)
    assert record["status"] == "failed"
    assert record["error"]["stage"] == "asr" and record["error"]["reason"] == reason
    assert words in record["error"]["message"]
    assert record["stages"]["asr"]["status"] == "failed"
    assert "asr" not in record["results"]
    assert [t for _, t, _ in events.read(conn, record["id"])][-2:] == ["stage.failed", "job.failed"]
    assert metric("voicequeue_jobs_total", stage="asr", outcome="failed") == failed_before + 1


def test_truncated_file_keeps_what_decodes(conn: redis.Redis, asr_settings: AsrSettings, speech: Path) -> None:
    """A cut-off upload (the gateway rejects these first) still transcribes the part that arrived."""
    data = (speech / "en_short/LDC93S1.wav").read_bytes()
    record = transcribe_bytes(conn, asr_settings, data[: len(data) // 2])
    assert record["status"] == "done"
    assert record["results"]["asr"]["duration_s"] == pytest.approx(2.925 / 2, abs=0.05)
    assert textnorm.normalize(record["results"]["asr"]["text"]).startswith("she had")


def test_expired_audio_fails_the_job(conn: redis.Redis, asr_settings: AsrSettings, speech: Path) -> None:
    job_id = submit(conn, (speech / JFK).read_bytes())
    record = jobs.load(conn, job_id)
    assert record is not None
    conn.delete(f"vq:blob:{record['inputs']['blob_id']}")
    stage.run("asr", job_id, conn, asr_settings, tasks.work, loaded(asr_settings))
    record = jobs.load(conn, job_id)
    assert record is not None and record["status"] == "failed"
    assert record["error"]["reason"] == "audio_missing"


def test_unknown_language_fails_the_job(conn: redis.Redis, asr_settings: AsrSettings, speech: Path) -> None:
    record = transcribe(conn, asr_settings, speech / JFK, language="xx")
    assert record["status"] == "failed" and record["error"]["reason"] == "unsupported_language"
    assert "'xx'" in record["error"]["message"]


def test_cancel_stops_transcribing(conn: redis.Redis, asr_settings: AsrSettings, speech: Path) -> None:
    """Cancelling mid-way: decoding stops at the next window and no result is stored."""
    job_id = submit(conn, (speech / LONG).read_bytes(), language="en")
    worker = threading.Thread(target=stage.run, args=("asr", job_id, conn, asr_settings, tasks.work,
                                                      loaded(asr_settings)))
    worker.start()
    deadline = time.monotonic() + 60
    while not partials(conn, job_id) and time.monotonic() < deadline:
        time.sleep(0.005)
    jobs.put_status(conn, job_id, "cancelled")
    worker.join(60)
    record = jobs.load(conn, job_id)
    assert record is not None and record["status"] == "cancelled"
    assert "asr" not in record["results"]
    # Uncancelled: 30 segments up to 168 s, decoded window by window (5 in the first, measured).
    # Cancelling after the first one stops at the next window, so no later window's segments appear.
    sent = partials(conn, job_id)
    assert 1 <= len(sent) <= 10 and max(p["end"] for p in sent) < 60


@pytest.mark.parametrize(("clip", "language", "hotwords", "before", "after"), [
    # Measured: "He was not an old-sposed young man." → "... an ill-disposed young man."
    ("en_short/librivox_sense_and_sensibility_0880.wav", "en", "ill disposed", 0.25, 0.0),
    # Measured, in Simplified since issue 14 (t2s, greedy): 广州市、佛地产中间协会分析 → 广州市 房地产 中介协会分析
    # (CER 0.167 → 0.0). In Traditional it was 0.25 → 0.08: t2s alone fixes the script, not the words.
    (ZH_AISHELL, "zh", ["房地产", "中介协会"], 0.15, 0.09),
])
def test_hotwords_steer_the_transcript(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                                       references: dict[str, dict[str, str]], clip: str, language: str,
                                       hotwords: Any, before: float, after: float) -> None:
    score = textnorm.cer if language == "zh" else textnorm.wer
    reference = references[clip]["transcript"]
    plain = transcribe(conn, asr_settings, speech / clip, language=language)["results"]["asr"]
    hinted = transcribe(conn, asr_settings, speech / clip, language=language, hotwords=hotwords)["results"]["asr"]
    assert score(reference, plain["text"]) >= before
    assert score(reference, hinted["text"]) <= after


def _channel_references(reference: str) -> list[str]:
    """A manifest transcript's parts per channel: "[L] … [R] …" or "[ch0/name a-b] … [ch1/name c-d] …"."""
    return [part.strip() for part in re.split(r"\[[^\]]*\]", reference) if part.strip()]


def _wav_channels(path: Path) -> list[np.ndarray]:
    """Each channel of a 16 kHz 16-bit stereo WAV as float32, read with `wave` rather than the stage's decoder."""
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (16000, 2, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return [pcm[:, i].astype(np.float32) / 32768.0 for i in range(2)]


def _stereo_wav(left: np.ndarray, right: np.ndarray) -> bytes:
    pcm = (np.clip(np.stack([left, right], axis=1), -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def _said_on(result: dict[str, Any], channel: int) -> str:
    return " ".join(s["text"] for s in result["segments"] if s["channel"] == channel)


def test_stereo_call_is_transcribed_per_channel(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                                                references: dict[str, dict[str, str]],
                                                raw_models: dict[str, WhisperModel]) -> None:
    audio_before = metric("voicequeue_audio_seconds_total", stage="asr")
    rtf_before = metric("voicequeue_realtime_factor_count", stage="asr")
    record = transcribe(conn, asr_settings, speech / STEREO, language="en")
    assert record["status"] == "done", record["error"]
    result = record["results"]["asr"]
    segments = result["segments"]
    assert result["channels"] == 2 and result["speakers"] == ["agent", "customer"]
    assert result["channel_languages"] == ["en", "en"] and result["language"] == "en"
    assert {(s["channel"], s["speaker"]) for s in segments} == {(0, "agent"), (1, "customer")}
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    assert result["text"] == " ".join(s["text"] for s in segments)
    assert result["duration_s"] == pytest.approx(5.0, abs=0.01)
    assert 0 < result["rtf"] < 1.5

    # Measured 0.0 on each channel (0.68 for the down-mix the stage used to transcribe).
    left, right = _channel_references(references[STEREO]["transcript"])
    assert textnorm.wer(left, _said_on(result, 0)) <= 0.15
    assert textnorm.wer(right, _said_on(result, 1)) <= 0.15

    # Each channel is exactly what raw faster-whisper makes of that channel alone, with the same options.
    for channel, samples in enumerate(_wav_channels(speech / STEREO)):
        pieces, _ = raw_models["tiny.en"].transcribe(samples, language="en", beam_size=asr_settings.asr_beam_size,
                                                     vad_filter=asr_settings.asr_vad)
        assert [(s["start"], s["end"], s["text"]) for s in segments if s["channel"] == channel] == [
            (round(p.start, 3), round(p.end, 3), p.text.strip()) for p in pieces]

    # Partials carry the labels, numbered as decoded: all of the left channel's, then the right's.
    sent = partials(conn, record["id"])
    assert [p["index"] for p in sent] == list(range(len(segments)))
    assert [(p["channel"], p["speaker"], p["text"]) for p in sent] == [
        (s["channel"], s["speaker"], s["text"]) for s in sorted(segments, key=lambda s: s["channel"])]

    assert subtitles.srt(segments).count("agent: He began") == 1
    assert "customer: The horizon" in subtitles.srt(segments)
    # One job, one recording: the audio counts once, and one RTF covers both passes.
    assert metric("voicequeue_audio_seconds_total", stage="asr") - audio_before == pytest.approx(5.0, abs=0.01)
    assert metric("voicequeue_realtime_factor_count", stage="asr") - rtf_before == 1


def test_long_call_labels_each_talker(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                                      references: dict[str, dict[str, str]],
                                      raw_models: dict[str, WhisperModel]) -> None:
    """52 s: "michael" on the left channel (1.06-25.25 s), then "sickmichael" on the right (26.72-51.46 s),
    each channel exact digital silence while the other talks."""
    result = transcribe(conn, asr_settings, speech / CALL, language="en")["results"]["asr"]
    assert result["channels"] == 2 and result["speakers"] == ["agent", "customer"]
    segments = result["segments"]
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    assert all(s["speaker"] == ("agent" if s["channel"] == 0 else "customer") for s in segments)
    assert all(s["end"] <= 26.0 for s in segments if s["channel"] == 0)
    assert all(s["start"] >= 26.0 for s in segments if s["channel"] == 1)
    assert result["duration_s"] == pytest.approx(52.441, abs=0.01)

    reference = references[CALL]["transcript"]
    left, right = _channel_references(reference)
    # Measured 0.10 and 0.17, 0.14 for the whole call (tiny.en; the references keep every "um" and "uh").
    assert textnorm.wer(left, _said_on(result, 0)) <= 0.20
    assert textnorm.wer(right, _said_on(result, 1)) <= 0.27
    assert textnorm.wer(reference, result["text"]) <= 0.22

    # Raw faster-whisper on the right channel alone: after 26.7 s of exact zeros Silero VAD misses the first
    # 8 s of speech. The stage lays a -80 dBFS floor over digital silence and keeps them.
    pieces, _ = raw_models["tiny.en"].transcribe(_wav_channels(speech / CALL)[1], language="en",
                                                 beam_size=asr_settings.asr_beam_size, vad_filter=True)
    raw = "".join(p.text for p in pieces)
    assert "sick corpus" not in textnorm.normalize(raw) and textnorm.wer(right, raw) >= 0.35
    assert "this is the sick corpus" in textnorm.normalize(_said_on(result, 1))


def test_channel_speakers_option_names_the_channels(conn: redis.Redis, asr_settings: AsrSettings,
                                                    speech: Path) -> None:
    result = transcribe(conn, asr_settings, speech / STEREO, language="en",
                        channel_speakers=["Dana", "caller"])["results"]["asr"]
    assert result["speakers"] == ["Dana", "caller"]
    said = {s["speaker"]: textnorm.normalize(s["text"]) for s in result["segments"]}
    assert "wizard" in said["Dana"] and "horizon" in said["caller"]

    settings = asr_settings.model_copy(update={"asr_channel_speakers": ["left", "right"]})
    result = transcribe(conn, settings, speech / STEREO, language="en")["results"]["asr"]
    assert result["speakers"] == ["left", "right"]

    record = transcribe(conn, asr_settings, speech / STEREO, language="en", channel_speakers=["only one"])
    assert record["status"] == "failed" and record["error"]["reason"] == "bad_channel_speakers"


def test_channel_correlation(speech: Path) -> None:
    jfk = audio.decode((speech / JFK).read_bytes(), split_stereo=True)
    call = audio.decode((speech / STEREO).read_bytes(), split_stereo=True)
    assert channels.channel_correlation(jfk) > 0.999
    assert abs(channels.channel_correlation(call)) < 0.05
    one = jfk[0][: call.shape[1]]
    noise = np.random.default_rng(1).standard_normal(one.shape[0]).astype(np.float32) * 0.01
    # A gain difference and a faint hiss leave one signal one signal; a flipped polarity is -1.
    assert channels.channel_correlation(np.stack([one, 0.3 * one + noise])) > 0.9
    assert channels.channel_correlation(np.stack([one, -one])) == pytest.approx(-1.0)
    # The agent's voice leaking into the customer's channel at a third of its level: still two talkers.
    assert channels.channel_correlation(np.stack([one + 0.3 * call[1], call[1] + 0.3 * one])) < 0.9
    silence = np.zeros_like(one)
    assert channels.channel_correlation(np.stack([silence, silence])) == 1.0
    assert channels.channel_correlation(np.stack([one, silence])) == 0.0


def test_fill_digital_silence_only_touches_long_runs_of_zeros() -> None:
    samples = np.full(5 * 16000, 0.1, dtype=np.float32)
    samples[1000:1000 + 8000] = 0.0  # 0.5 s: a pause, left alone
    samples[20000:20000 + 32000] = 0.0  # 2 s: digital silence
    filled = channels.fill_digital_silence(samples)
    assert np.array_equal(filled[:20000], samples[:20000]) and np.array_equal(filled[52000:], samples[52000:])
    floor = filled[20000:52000]
    assert np.count_nonzero(floor) == floor.shape[0]
    assert float(np.sqrt(np.mean(floor**2))) == pytest.approx(1e-4, rel=0.05)
    assert np.array_equal(channels.fill_digital_silence(samples), filled)  # seeded: same file, same transcript
    assert channels.fill_digital_silence(np.ones(100, dtype=np.float32)).sum() == 100


def test_polarity_flipped_copy_is_one_mono_transcription(conn: redis.Redis, asr_settings: AsrSettings,
                                                         speech: Path, references: dict[str, dict[str, str]]) -> None:
    left = audio.decode((speech / JFK).read_bytes())
    record = transcribe_bytes(conn, asr_settings, _stereo_wav(left, -left))
    result = record["results"]["asr"]
    assert result["channels"] == 1 and all(s["speaker"] is None for s in result["segments"])
    assert textnorm.wer(references[JFK]["transcript"], result["text"]) <= 0.10
