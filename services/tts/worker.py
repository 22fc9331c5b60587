"""The TTS worker: piper and espeak-ng load once; jobs run in-process (or forked, sharing them: VQ_WORKER_FORK)."""

from __future__ import annotations

from services.tts import tasks
from services.tts.config import TtsSettings
from shared import queues
from shared.worker import Service, serve

SERVICE = Service("tts", tasks.load, tasks.work, tasks={queues.CHUNK_TASK: tasks.speak_sentence})


def main() -> None:
    settings = TtsSettings()
    serve(SERVICE, settings, settings.tts_metrics_port)


if __name__ == "__main__":
    main()
