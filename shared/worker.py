"""The worker process every stage service runs, in one of two deliberate modes.

* In-process (`InProcessWorker`, the default): the model loads once and jobs run
  in the worker itself, ~3 ms of rq overhead per job (bench/worker_overhead.py),
  with the engine's thread pools warm. A thread keeps rq's heartbeats going while
  a job runs, which rq's SimpleWorker does not, so a killed worker's job is still
  noticed within the monitoring interval. ASR must run this way: CTranslate2 and
  torch are not fork-safe (a model loaded in the parent hangs in the child, and
  their bundled libgomp hangs after fork), so forking would reload the model in
  every job (+0.2-0.35 s).
* Forking (`ForkingWorker`, VQ_WORKER_FORK=true for llm and tts): the parent loads
  its models, `gc.freeze()`s, and forks a job process per job sharing the model
  pages copy-on-write. ~18 ms per job plus cold engine thread pools in the child
  (piper ran ~0.15 s slower per reply), in exchange for crash isolation: a
  segfault or hard timeout on one input kills only that job process.

The plain `rq worker` command is not used: it would import and load the model per job.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import REGISTRY, start_http_server
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.worker import BaseWorker, WorkerStatus

from shared import logs, metrics, queues
from shared.config import CommonSettings
from shared.connection import connect

log = logging.getLogger(__name__)


class ForkingWorker(Worker):
    """Forks per job; carries the job process's metric updates back to the parent that serves /metrics."""

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


class InProcessWorker(SimpleWorker):
    """Runs jobs in the worker process, heartbeating from a thread as the forking worker's parent would."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat_until, args=(job, execution, done), daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _heartbeat_until(self, job: Job, execution: Any, done: threading.Event) -> None:
        while not done.wait(self.job_monitoring_interval):
            try:
                self.maintain_heartbeats(job, execution)
            except Exception:  # a missed beat must not kill the job; the next one may get through
                log.warning("heartbeat failed", exc_info=True)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # SimpleWorker's TTL is the whole job timeout + 60 s; with beats every interval, use the short one.
        return BaseWorker.get_heartbeat_ttl(self, job, working_time)


def serve(
    stage: str,
    settings: CommonSettings,
    metrics_port: int,
    preload: Callable[[], dict[str, float]],
    *,
    fork_safe: bool = True,
    priorities: Sequence[str] = queues.PRIORITIES,
) -> None:
    """Load models, expose /metrics, then work `<stage>:live` before `<stage>:batch` until stopped.

    `preload` loads the engines and returns {model name: load seconds}. Jobs fork only when
    `settings.worker_fork` asks for it and the engines are `fork_safe`. `priorities`: the queues
    taken, in order (a live-only worker stays free for live turns while others work through a batch).
    """
    names = [queues.name(stage, p) for p in priorities]
    fork = settings.worker_fork and fork_safe
    logs.setup(f"{stage}-worker", settings.log_level, settings.log_json)
    conn = connect(settings.redis_url, wait_s=30)
    for model, seconds in preload().items():
        metrics.set_gauge(metrics.MODEL_LOAD, seconds, stage=stage, model=model)
        log.info("model loaded", extra={"stage": stage, "model": model, "seconds": round(seconds, 3)})
    if fork:
        gc.collect()
        gc.freeze()  # keep the refcount/GC passes of job processes off the parent's (model) pages
    REGISTRY.register(metrics.QueueDepthCollector(conn, queues.names_for(stage)))  # every queue of the stage
    start_http_server(metrics_port)
    worker_class = ForkingWorker if fork else InProcessWorker
    worker = worker_class(
        names,
        connection=conn,
        job_monitoring_interval=settings.worker_job_monitoring_interval_s,
        maintenance_interval=settings.worker_maintenance_interval_s,
    )
    log.info("worker ready", extra={"stage": stage, "mode": "fork" if fork else "in-process", "queues": names})
    worker.work(with_scheduler=True, logging_level=settings.log_level.upper())


def timed(load: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = load()
    return value, time.perf_counter() - start
