"""espeak-ng (offline, formant synthesis, ~100 languages) for what piper has no voice for, e.g. Mandarin.

It uses the libespeak-ng 1.52 and data bundled in `espeakng-loader`, through
ctypes: Debian's 1.51 cannot speak Mandarin. The library is initialised in
synchronous mode, which starts no threads, so it can be loaded once in the
worker's parent and used in the forked job processes.

libespeak-ng keeps global state (one voice, one callback, one output buffer),
and a second `espeak_Initialize` in a process that already spoke crashed it
(a segfault when a test module loaded the engines after another had). So the
library is initialised once per process (`_library()`) and every
`EspeakEngine` shares it, and its lock.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import espeakng_loader
import numpy as np

from services.tts.engines.base import Speech, base_language

# From espeak-ng's speak_lib.h.
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000
CHARS_UTF8 = 1
POS_CHARACTER = 1
PARAM_RATE = 1
EE_OK = 0
DEFAULT_RATE_WPM = 175
MIN_RATE_WPM, MAX_RATE_WPM = 80, 450

SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(RuntimeError):
    pass


def _load_library() -> ctypes.CDLL:
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    return lib


def voice_names(data_dir: Path) -> frozenset[str]:
    """Voice identifiers (`cmn`, `en-us`, `de`, …): the file names under espeak-ng-data/lang."""
    return frozenset(p.name.lower() for p in (data_dir / "lang").rglob("*") if p.is_file())


class _Library:
    """The process's one initialised libespeak-ng: the callback fills `chunks` of the synthesis under `lock`."""

    def __init__(self, data_dir: Path) -> None:
        self.lib = _load_library()
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_dir).encode(),
                                                      INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({self.sample_rate}) with data at {data_dir}")
        self.chunks: list[np.ndarray] = []
        self.lock = threading.Lock()
        # Keep a reference: ctypes frees the C trampoline when the Python object goes.
        self.callback = SynthCallback(self._collect)
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int | None) -> int:
        if count > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0 = go on


_LIBRARY: _Library | None = None
_LIBRARY_LOCK = threading.Lock()


def _library(data_dir: Path) -> _Library:
    global _LIBRARY
    with _LIBRARY_LOCK:
        if _LIBRARY is None:
            _LIBRARY = _Library(data_dir)
        return _LIBRARY


class EspeakEngine:
    name = "espeak"

    def __init__(self, zh_voice: str = "cmn", default_voice: str = "en-us") -> None:
        data_dir = Path(espeakng_loader.get_data_path())
        self.voices = voice_names(data_dir)
        self.zh_voice = zh_voice.lower()
        self.default_voice = default_voice.lower()
        for v in (self.zh_voice, self.default_voice):
            if v not in self.voices:
                raise EspeakError(f"espeak-ng has no voice {v!r}")
        self._library = _library(data_dir)
        self.sample_rate = self._library.sample_rate

    def _voice_for_language(self, language: str | None) -> str:
        base = base_language(language)
        if base is None:
            return self.default_voice
        if base == "zh":
            return self.zh_voice
        if base == "en":
            return self.default_voice
        return base

    def supports(self, language: str | None) -> bool:
        return self._voice_for_language(language) in self.voices

    def voice_for(self, voice: str | None, language: str | None) -> str:
        if voice and voice.lower() in self.voices:
            return voice.lower()
        return self._voice_for_language(language)

    def synthesize(self, text: str, *, voice: str | None = None, language: str | None = None,
                   speed: float = 1.0) -> Speech:
        name = self.voice_for(voice, language)
        data = text.encode()
        rate = int(min(MAX_RATE_WPM, max(MIN_RATE_WPM, DEFAULT_RATE_WPM * speed)))
        shared = self._library
        with shared.lock:
            if shared.lib.espeak_SetVoiceByName(name.encode()) != EE_OK:
                raise EspeakError(f"espeak-ng could not select voice {name!r}")
            shared.lib.espeak_SetParameter(PARAM_RATE, rate, 0)
            shared.chunks = []
            rc = shared.lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            chunks, shared.chunks = shared.chunks, []
        if rc != EE_OK:
            raise EspeakError(f"espeak_Synth failed with code {rc}")
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return Speech(pcm.astype(np.int16, copy=False), self.sample_rate)
