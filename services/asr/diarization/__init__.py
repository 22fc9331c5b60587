"""Diarisation engines for mono recordings, chosen by `asr_diarization` (see base.py for the seam).

To add one: write `<name>.py` with a class following `base.Diarizer`, register it in ENGINES
with a factory taking the settings, and add its name to `services.asr.config.DIARIZATION_ENGINES`.
Engines load lazily, so an unused engine's packages need not be installed; an unknown name is
refused when the settings are read, before the worker starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.asr.config import AsrSettings
    from services.asr.diarization.base import Diarizer

# name -> "module:factory"; the factory takes the ASR settings and returns a Diarizer.
ENGINES = {
    "none": "services.asr.diarization:single_speaker",
}


def single_speaker(settings: AsrSettings) -> Diarizer:
    from services.asr.diarization.none import SingleSpeaker

    return SingleSpeaker(settings.asr_mono_speaker)


def check(name: str) -> str:
    """`name` if it is a known engine; otherwise a ValueError naming the known ones."""
    if name not in ENGINES:
        raise ValueError(f"unknown diarisation engine {name!r}; known engines: {', '.join(sorted(ENGINES))}")
    return name


def make(settings: AsrSettings) -> Diarizer:
    module, factory = ENGINES[check(settings.asr_diarization)].split(":")
    diarizer: Diarizer = getattr(importlib.import_module(module), factory)(settings)
    return diarizer
