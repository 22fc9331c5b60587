"""The ASR worker: whisper models load once, and jobs run in the worker process.

In-process, not forking: CTranslate2 and torch models do not survive fork (see
shared/worker.py), so a forking worker would reload the model in every job.
"""

from __future__ import annotations

import os

from services.asr import tasks
from services.asr.config import AsrSettings
from shared.worker import Service, serve

SERVICE = Service("asr", tasks.load, tasks.work, fork_safe=False)


def main() -> None:
    settings = AsrSettings()
    if settings.asr_worker_nice:
        os.nice(settings.asr_worker_nice)  # before loading: CTranslate2's threads inherit it
    serve(SERVICE, settings, settings.asr_metrics_port, priorities=settings.asr_worker_priorities)


if __name__ == "__main__":
    main()
