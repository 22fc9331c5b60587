"""CTranslate2 → openai-whisper conversion, and the two engines agreeing on the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis
import whisper
from whisper.model import ModelDimensions, Whisper

from services.asr import convert
from services.asr.config import AsrSettings
from services.asr.engines.faster_whisper import FasterWhisperEngine
from services.asr.engines.openai_whisper import OpenAIWhisperEngine
from shared import audio, models, textnorm
from tests.asr.conftest import transcribe

TINY_DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4,
             "n_vocab": 51864, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6, "n_text_layer": 4}


@pytest.fixture(scope="module")
def tiny_variables() -> dict[str, np.ndarray]:
    spec, variables = convert.read_model(models.whisper_tiny_en() / "model.bin")
    assert spec == "WhisperSpec"
    return variables


def test_reads_the_ctranslate2_layout(tiny_variables: dict[str, np.ndarray]) -> None:
    assert convert.dimensions(tiny_variables) == TINY_DIMS
    assert tiny_variables["decoder/embeddings/weight"].dtype == np.float16
    # The output projection is an alias of the token embedding.
    assert tiny_variables["decoder/projection/weight"] is tiny_variables["decoder/embeddings/weight"]
    # What the split relies on: the key's share of every fused bias is zeros.
    d = TINY_DIMS["n_audio_state"]
    fused = [n for n in tiny_variables if n.endswith("self_attention/linear_0/bias")]
    assert len(fused) == TINY_DIMS["n_audio_layer"] + TINY_DIMS["n_text_layer"]
    for name in fused:
        bias = tiny_variables[name]
        assert bias.shape == (3 * d,) and not bias[d:2 * d].any() and bias[:d].any()
    for i in range(TINY_DIMS["n_text_layer"]):
        bias = tiny_variables[f"decoder/layer_{i}/attention/linear_1/bias"]
        assert bias.shape == (2 * d,) and not bias[:d].any()


def test_state_dict_fits_openai_whisper_exactly(tiny_variables: dict[str, np.ndarray]) -> None:
    expected = Whisper(ModelDimensions(**TINY_DIMS)).state_dict()
    converted = convert.state_dict(tiny_variables)
    assert set(converted) == set(expected)
    for name, tensor in expected.items():
        assert tuple(converted[name].shape) == tuple(tensor.shape), name


def test_convert_named_converts_once(tmp_path: Path) -> None:
    path = convert.convert_named("tiny.en", tmp_path)
    assert path == tmp_path / "openai-whisper-tiny.en.pt"
    model = whisper.load_model(str(path), device="cpu")
    assert model.dims.n_vocab == TINY_DIMS["n_vocab"] and not model.is_multilingual
    first = path.stat().st_mtime_ns
    assert convert.convert_named("tiny.en", tmp_path) == path
    assert path.stat().st_mtime_ns == first
    # A damaged checkpoint no longer matches its stamp and is written again.
    with path.open("ab") as f:
        f.write(b"x")
    assert not convert.is_current(models.whisper_tiny_en(), path)
    convert.convert_named("tiny.en", tmp_path)
    assert convert.is_current(models.whisper_tiny_en(), path)


def test_tokenizer_ships_with_the_package() -> None:
    assets = Path(whisper.__file__).parent / "assets"
    for name in ("gpt2.tiktoken", "multilingual.tiktoken", "mel_filters.npz"):
        assert (assets / name).stat().st_size > 0
    tokenizer = whisper.tokenizer.get_tokenizer(multilingual=True, language="zh")
    assert tokenizer.decode(tokenizer.encode(" hello 世界")) == " hello 世界"


@pytest.mark.parametrize("beam_size", [1, 5])
def test_both_engines_give_the_same_transcript(asr_settings: AsrSettings, speech: Path,
                                               references: dict[str, dict[str, str]], beam_size: int) -> None:
    """Same weights, float32 on both sides, faster-whisper's decoding defaults mirrored in openai-whisper."""
    pcm = audio.decode((speech / "en_short/jfk.flac").read_bytes())
    fw = FasterWhisperEngine("tiny.en", models.whisper_tiny_en(), compute_type="float32")
    ow = OpenAIWhisperEngine("tiny.en", asr_settings.models_dir)
    a = fw.transcribe(pcm, language="en", beam_size=beam_size, vad=True)
    b = ow.transcribe(pcm, language="en", beam_size=beam_size, vad=True)
    assert a.text == b.text
    assert textnorm.wer(references["en_short/jfk.flac"]["transcript"], b.text) <= 0.10
    assert [(s.start, s.end) for s in a.segments] == [(s.start, s.end) for s in b.segments]
    for x, y in zip(a.segments, b.segments, strict=True):
        assert x.avg_logprob == pytest.approx(y.avg_logprob, abs=2e-3)
        assert x.no_speech_prob == pytest.approx(y.no_speech_prob, abs=2e-3)


def test_openai_engine_in_the_stage_matches_faster_whisper(conn: redis.Redis, redis_url: str, speech: Path,
                                                          references: dict[str, dict[str, str]]) -> None:
    """Through the stage: Mandarin goes to the multilingual model (converted on first use) on both engines."""
    clip = speech / "zh/funasr_asr_example.wav"
    fw = AsrSettings(redis_url=redis_url, asr_compute_type="float32")
    ow = AsrSettings(redis_url=redis_url, asr_engine="openai-whisper")
    a = transcribe(conn, fw, clip, language="zh")["results"]["asr"]
    b = transcribe(conn, ow, clip, language="zh")["results"]["asr"]
    assert (a["engine"], b["engine"]) == ("faster-whisper", "openai-whisper")
    assert a["model"] == b["model"] == "base"
    assert a["text"] == b["text"]
    assert textnorm.cer(references["zh/funasr_asr_example.wav"]["transcript"], b["text"]) <= 0.35

