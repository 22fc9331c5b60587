"""The TTS worker: piper and espeak-ng load once; jobs run in-process (or forked, sharing them: VQ_WORKER_FORK)."""

from __future__ import annotations

from services.tts import tasks
from services.tts.config import TtsSettings
from shared.worker import serve


def main() -> None:
    settings = TtsSettings()

    def preload() -> dict[str, float]:
        return tasks.preload(settings)

    serve("tts", settings, settings.tts_metrics_port, preload)


if __name__ == "__main__":
    main()
