"""Per-job cost of the worker classes, with a real model loaded in the worker process.

Baseline: rq's SimpleWorker (no fork, no heartbeats while a job runs). Compared: our
InProcessWorker (no fork, heartbeat thread) and ForkingWorker (fork per job after loading
the model and gc.freeze()). Each enqueues N no-op jobs and drains them in burst
mode against a real redis-server. Usage: `python bench/worker_overhead.py [--jobs 200]`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from rq import Queue, SimpleWorker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared import models, redis_server  # noqa: E402
from shared.worker import ForkingWorker, InProcessWorker  # noqa: E402
from tests.stack import free_port  # noqa: E402


def per_job_ms(conn: redis.Redis, worker_cls: type, jobs: int) -> float:
    q = Queue("bench", connection=conn)
    q.empty()
    for _ in range(jobs):
        q.enqueue("os.getpid", result_ttl=0)
    worker = worker_cls([q], connection=conn)
    start = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    return (time.perf_counter() - start) / jobs * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen(redis_server.command(port, Path(tempfile.mkdtemp()), appendonly=False),
                            stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        from faster_whisper import WhisperModel

        model = WhisperModel(str(models.whisper_tiny_en()), device="cpu", compute_type="int8")  # noqa: F841
        gc.collect()
        gc.freeze()
        conn = redis.Redis(port=port)
        classes = {"SimpleWorker (baseline)": SimpleWorker, "InProcessWorker": InProcessWorker,
                   "ForkingWorker": ForkingWorker}
        results: dict[str, list[float]] = {name: [] for name in classes}
        for _ in range(args.rounds):
            for name, cls in classes.items():
                results[name].append(per_job_ms(conn, cls, args.jobs))
        base = statistics.median(results["SimpleWorker (baseline)"])
        print(f"{'worker':26s} {'median ms/job':>14s} {'vs baseline':>12s}")
        for name, values in results.items():
            med = statistics.median(values)
            print(f"{name:26s} {med:14.2f} {med / base:11.2f}x")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
