"""`shared.reaper` and the job a worker took off the queue but never started (Redis went away in between)."""

from __future__ import annotations

import time

import redis
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import JobStatus
from rq.registry import StartedJobRegistry

from shared import reaper


def taken_and_lost(conn: redis.Redis, queue: Queue) -> IntermediateQueue:
    """What a worker's dequeue does before it registers the job: the id moves to the intermediate list."""
    intermediate = IntermediateQueue(queue.key, connection=conn)
    conn.lmove(queue.key, intermediate.key)
    return intermediate


def test_a_job_lost_between_dequeue_and_start_goes_back_to_the_front_once(conn: redis.Redis) -> None:
    queue = Queue("stranded", connection=conn)
    lost = queue.enqueue("builtins.print", "lost")
    waiting = queue.enqueue("builtins.print", "waiting")
    intermediate = taken_and_lost(conn, queue)
    assert queue.job_ids == [waiting.id] and intermediate.get_job_ids() == [lost.id]

    assert reaper.stranded(conn, queue.name) == []  # first seen now: a worker may be registering it
    assert reaper.stranded(conn, queue.name, now=time.time() + reaper.STRANDED_S / 2) == []
    later = time.time() + reaper.STRANDED_S
    assert reaper.stranded(conn, queue.name, now=later) == [lost.id]
    assert reaper.rescue(conn, queue.name, lost.id)
    assert queue.job_ids == [lost.id, waiting.id] and intermediate.get_job_ids() == []
    assert not reaper.rescue(conn, queue.name, lost.id)  # a second reaper finds nothing to do
    assert queue.job_ids == [lost.id, waiting.id]


def test_started_and_finished_jobs_are_not_requeued(conn: redis.Redis) -> None:
    queue = Queue("stranded", connection=conn)
    running = queue.enqueue("builtins.print", "running")
    finished = queue.enqueue("builtins.print", "finished")
    intermediate = taken_and_lost(conn, queue)
    taken_and_lost(conn, queue)
    conn.zadd(StartedJobRegistry(queue.name, connection=conn).key, {f"{running.id}:exec1": time.time() + 60})
    finished.set_status(JobStatus.FINISHED)

    assert reaper.stranded(conn, queue.name) == []
    later = time.time() + reaper.STRANDED_S
    assert reaper.stranded(conn, queue.name, now=later) == [finished.id]  # the running one is registered
    assert not reaper.rescue(conn, queue.name, finished.id)  # only dropped from the list
    assert queue.job_ids == [] and intermediate.get_job_ids() == [running.id]


def test_the_sweep_requeues_a_stranded_job(conn: redis.Redis) -> None:
    queue = Queue("stranded", connection=conn)
    lost = queue.enqueue("builtins.print", "lost")
    intermediate = taken_and_lost(conn, queue)
    assert reaper.sweep(conn, [queue.name]) == []
    conn.set(intermediate.get_first_seen_key(lost.id), time.time() - reaper.STRANDED_S)  # seen a while ago
    assert reaper.sweep(conn, [queue.name]) == [lost.id]
    assert queue.job_ids == [lost.id]
