"""The worker process every stage service runs.

Choice (see BRIEF.md and docs/benchmarks.md): a forking rq `Worker` whose
parent loads the model once before forking, then `gc.freeze()`s so the
forked job processes share the model's pages copy-on-write. Forking costs a
few ms per job, but keeps heartbeats (a killed worker's job is found within
seconds) and confines a crash on bad input to one job process.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, start_http_server
from rq import Queue, Worker
from rq.job import Job

from shared import logs, metrics, queues
from shared.config import CommonSettings
from shared.connection import connect

log = logging.getLogger(__name__)


class StageWorker(Worker):
    """Drains `<stage>:live` before `<stage>:batch` and carries metrics out of job processes."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        finally:
            metrics.drain(self.connection, self.name)

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        metrics.start_buffering()
        try:
            return super().perform_job(job, queue, execution)
        finally:
            metrics.flush(self.connection, self.name)


def serve(stage: str, settings: CommonSettings, metrics_port: int, preload: Callable[[], dict[str, float]]) -> None:
    """Load models, expose /metrics, then work `<stage>:live` and `<stage>:batch` until stopped.

    `preload` loads the engines and returns {model name: load seconds}.
    """
    logs.setup(f"{stage}-worker", settings.log_level, settings.log_json)
    conn = connect(settings.redis_url, wait_s=30)
    for model, seconds in preload().items():
        metrics.set_gauge(metrics.MODEL_LOAD, seconds, stage=stage, model=model)
        log.info("model loaded", extra={"stage": stage, "model": model, "seconds": round(seconds, 3)})
    gc.collect()
    gc.freeze()
    REGISTRY.register(metrics.QueueDepthCollector(conn, queues.names_for(stage)))
    start_http_server(metrics_port)
    worker = StageWorker(
        queues.names_for(stage),
        connection=conn,
        job_monitoring_interval=settings.worker_job_monitoring_interval_s,
        maintenance_interval=settings.worker_maintenance_interval_s,
    )
    worker.work(with_scheduler=True, logging_level=settings.log_level.upper())


def timed(load: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = load()
    return value, time.perf_counter() - start
