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

* Threaded (`ThreadWorker`, `serve(concurrency=n)`; the llm worker's VQ_LLM_WORKER_JOBS): n in-process
  workers on threads of one process, for a stage whose job mostly waits on another server. The llm
  worker runs one job per llama-server slot, so the server batches that many replies.

The plain `rq worker` command is not used: it would import and load the model per job.

Crash recovery (issue 5): running jobs heartbeat every `worker_job_monitoring_interval_s`
with a deadline `worker_dead_after_s` ahead (rq adds 60 s to its own), and every worker runs
a `shared.reaper.Reaper` thread that requeues jobs past their deadline, whichever stage they
belong to. A forked job process dies with its parent (PR_SET_PDEATHSIG): without the parent
nobody heartbeats it, so it would be re-run anyway. A worker whose Redis goes away does not
exit: `serve` starts a new rq worker once Redis answers again. Jobs are taken with an atomic move into
the queue's intermediate list (`shared.dequeue`), so a take whose reply was lost leaves the job where the
reaper finds it.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import redis
from prometheus_client import REGISTRY, start_http_server
from rq import Queue, SimpleWorker, Worker, worker_registration
from rq.exceptions import StopRequested
from rq.job import Job
from rq.registry import DeferredJobRegistry, FailedJobRegistry, FinishedJobRegistry
from rq.timeouts import TimerDeathPenalty
from rq.utils import now as rq_now
from rq.worker import BaseWorker, WorkerStatus

from shared import logs, metrics, queues, reaper
from shared.config import CommonSettings
from shared.connection import connect
from shared.dequeue import MovingQueue
from shared.stage import Work
from shared.stage import run as run_stage

log = logging.getLogger(__name__)

S = TypeVar("S", bound=CommonSettings)
R = TypeVar("R", bound="Loaded")


class Loaded(Protocol):
    """What a service's `load` returns: its models and engines, and what each took to load."""

    @property
    def load_seconds(self) -> dict[str, float]: ...


Task = Callable[..., None]  # (conn, settings, resources, *the rq job's args)


@dataclass(frozen=True)
class Service(Generic[S, R]):
    """A stage service as its worker runs it: `load(settings)` once per process, then `work(ctx)` for each
    job of `stage` and `tasks[name](conn, settings, resources, *args)` for each job naming another task
    (`shared.queues.CHUNK_TASK`). `fork_safe`: its models survive fork (VQ_WORKER_FORK may fork per job)."""

    stage: str
    load: Callable[[S], R]
    work: Work[R]
    tasks: Mapping[str, Task] = field(default_factory=dict)
    fork_safe: bool = True


@dataclass
class Running(Generic[S, R]):
    """A service with its resources loaded: what every job of this worker runs with."""

    service: Service[S, R]
    settings: S
    resources: R

    def perform(self, conn: redis.Redis, func_name: str, args: Sequence[Any]) -> None:
        if func_name == queues.STAGE_TASK:
            (job_id,) = args
            run_stage(self.service.stage, str(job_id), conn, self.settings, self.service.work, self.resources)
        elif func_name in self.service.tasks:
            self.service.tasks[func_name](conn, self.settings, self.resources, *args)
        else:
            raise RuntimeError(f"the {self.service.stage} worker has no task {func_name!r}")


class StageJob(Job):
    """An rq job run by the worker's service (`Running.perform`) rather than by importing its function:
    the function names only say which task it is."""

    running: Running[Any, Any] | None = None

    def _execute(self) -> Any:
        if self.running is None:
            raise RuntimeError("a voicequeue job ran outside `voicequeue worker`")
        self.running.perform(self.connection, str(self.func_name), self.args)
        return None


class Heartbeats:
    """What both worker classes add to rq's: each job runs with the worker's loaded service; a running job's
    heartbeat deadline is `dead_after_s` ahead, not rq's interval + 60 s, so the reaper can tell a dead
    worker within seconds; and rq's registry maintenance runs without its abandoned-job pass."""

    dead_after_s = 12
    running: Running[Any, Any] | None = None
    queues: list[Queue]
    last_cleaned_at: Any
    queue_class = MovingQueue  # every job is taken through its queue's intermediate list (`shared.dequeue`)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        # rq clears the intermediate list only for a worker of one queue; MovingQueue uses it for any number.
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)  # type: ignore[misc]

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        if isinstance(job, StageJob):
            job.running = self.running
        performed: bool = super().perform_job(job, queue, execution)  # type: ignore[misc]
        return performed

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return int(self.dead_after_s)

    def clean_registries(self) -> None:
        """rq's maintenance minus StartedJobRegistry.cleanup: `shared.reaper` requeues abandoned jobs; rq's
        pass would fail them, or, racing a reaper, enqueue one twice."""
        for queue in self.queues:
            if not queue.acquire_maintenance_lock():
                continue
            try:
                for registry_class in (FinishedJobRegistry, FailedJobRegistry, DeferredJobRegistry):
                    registry_class(queue.name, connection=queue.connection).cleanup()
                worker_registration.clean_worker_registry(queue)
                queue.intermediate_queue.cleanup(self, queue)  # type: ignore[arg-type]
            finally:
                queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
        self.last_cleaned_at = rq_now()


class ForkingWorker(Heartbeats, Worker):
    """Forks per job; carries the job process's metric updates back to the parent that serves /metrics."""

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        _die_with_parent()
        super().main_work_horse(job, queue)

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


class InProcessWorker(Heartbeats, SimpleWorker):
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


class ThreadWorker(InProcessWorker):
    """One of several in-process workers of one process, each on its own thread, all sharing the loaded
    service (`serve(concurrency=n)`). For a stage whose job mostly waits on another server: the llm
    worker's jobs wait on llama-server, which decodes several replies at once in its parallel slots.

    Signals reach only the main thread, which sets `stop`; an idle thread sees it within `STOP_POLL_S`, a
    busy one after its job. Job time limits use a timer thread, as SIGALRM would go to the main thread."""

    STOP_POLL_S = 1
    death_penalty_class = TimerDeathPenalty
    stop: threading.Event

    def _install_signal_handlers(self) -> None:
        """None: `signal.signal` works only on the main thread (`work_in_threads` installs the handlers)."""

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        while not self.stop.is_set():
            # rq blocks up to `timeout` (minutes) for a job; wait in short rounds so a stop is seen.
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time=self.STOP_POLL_S)
            if result is not None:
                return result
        raise StopRequested()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this (forked job) process when its parent worker dies."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def serve(
    service: Service[S, R],
    settings: S,
    metrics_port: int,
    *,
    priorities: Sequence[str] = queues.PRIORITIES,
    concurrency: int = 1,
) -> None:
    """Load the service once, expose /metrics, then work `<stage>:live` before `<stage>:batch` until stopped.

    Jobs fork only when `settings.worker_fork` asks for it and the service is `fork_safe`. `priorities`:
    the queues taken, in order (a live-only worker stays free for live turns while others work through a
    batch).
    """
    stage_name = service.stage
    names = [queues.name(stage_name, p) for p in priorities]
    fork = settings.worker_fork and service.fork_safe
    logs.setup(f"{stage_name}-worker", settings.log_level, settings.log_json,
               debug=settings.debug, redact_pii=settings.log_redact_pii)
    conn = connect(settings, wait_s=30)
    resources = service.load(settings)
    for model, seconds in resources.load_seconds.items():
        metrics.set_gauge(metrics.MODEL_LOAD, seconds, stage=stage_name, model=model)
        log.info("model loaded", extra={"stage": stage_name, "model": model, "seconds": round(seconds, 3)})
    if fork:
        gc.collect()
        gc.freeze()  # keep the refcount/GC passes of job processes off the parent's (model) pages
    REGISTRY.register(metrics.QueueDepthCollector(conn, queues.names_for(stage_name)))  # every queue of the stage
    start_http_server(metrics_port)
    threads = 1 if fork else max(1, concurrency)
    worker_class = ForkingWorker if fork else ThreadWorker if threads > 1 else InProcessWorker
    worker_class.dead_after_s = settings.worker_dead_after_s
    worker_class.running = Running(service, settings, resources)
    reaper.Reaper(settings, queues.all_names()).start()
    log.info("worker ready", extra={"stage": stage_name, "mode": "fork" if fork else "in-process", "queues": names,
                                    "jobs_at_once": threads})

    def make() -> BaseWorker:
        return worker_class(
            names,
            connection=conn,
            job_class=StageJob,
            job_monitoring_interval=settings.worker_job_monitoring_interval_s,
            maintenance_interval=settings.worker_maintenance_interval_s,
        )

    if threads > 1:
        work_in_threads(make, conn, settings, threads)
    else:
        work_until_stopped(make, conn, settings)


def work_until_stopped(make: Callable[[], BaseWorker], conn: redis.Redis, settings: CommonSettings) -> None:
    """Run rq workers until one stops on request (SIGTERM/SIGINT).

    rq's loop retries a lost connection only while it waits for a job; elsewhere (a heartbeat after a
    job, registry maintenance) it logs the error and returns. Then a new worker (a new name: the old
    one may still be registered) starts as soon as Redis answers.
    """
    while True:
        worker = None
        try:
            worker = make()
            # No rq scheduler process: nothing is scheduled for later (retries are immediate), and a
            # scheduler outliving a killed worker would keep its metrics port and block its restart.
            worker.work(logging_level=settings.log_level.upper())
        except (redis.ConnectionError, redis.TimeoutError):
            log.warning("worker lost Redis", exc_info=True)
        if worker is not None and (worker._stop_requested or worker._shutdown_requested_date is not None):
            return  # SIGTERM/SIGINT (rq notes the date whether it was busy or idle)
        log.warning("rq worker stopped without a stop request (Redis unreachable?); starting a new one")
        time.sleep(1.0)
        _wait_for_redis(conn)


def work_in_threads(make: Callable[[], BaseWorker], conn: redis.Redis, settings: CommonSettings, n: int) -> None:
    """Run `n` ThreadWorkers until SIGTERM/SIGINT, each restarted as `work_until_stopped` restarts one.

    The first signal is a warm stop: idle threads leave, busy ones finish their job. A second one exits at
    once; the jobs still running are then requeued by the next worker's reaper, as after a kill."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            worker = make()
            assert isinstance(worker, ThreadWorker)
            worker.stop = stop
            try:
                worker.work(logging_level=settings.log_level.upper())
            except (redis.ConnectionError, redis.TimeoutError):
                log.warning("worker lost Redis", exc_info=True)
            if stop.is_set():
                return
            log.warning("rq worker stopped without a stop request (Redis unreachable?); starting a new one")
            time.sleep(1.0)
            _wait_for_redis(conn)

    def request_stop(signum: int, frame: Any) -> None:
        if stop.is_set():
            log.warning("second stop signal: leaving running jobs to the reaper")
            os._exit(1)
        log.info("stop requested: finishing running jobs", extra={"signal": signum})
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    threads = [threading.Thread(target=loop, name=f"worker-{i}", daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)  # in short waits, so the main thread gets to run the signal handlers


def _wait_for_redis(conn: redis.Redis) -> None:
    delay = 0.5
    while True:
        try:
            conn.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def timed(load: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = load()
    return value, time.perf_counter() - start
