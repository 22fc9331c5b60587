"""Retention: removing everything a job owns, and finding keys that would outlive their TTL.

Every key a request writes expires: job records and their event streams after
`job_ttl_s`, blobs after `blob_ttl_s`, sessions after `session_ttl_s` idle,
batch hashes with their jobs, the answer and speech caches after their own
TTLs. `purge_job` removes a job at once: its record, event stream, every
blob it owns (upload, reply audio, sentence audio) and its rq jobs (stage
and sentence jobs still queued, with rq's own hashes and results).

A stage still running when its job is purged may write one more field to the
job hash (`jobs.add_cost`, a sentence claim). Redis then creates the hash again
with no TTL and no `meta`: an orphan that no route can read but that would
stay forever. `sweep` finds such keys, deletes orphans and gives any other
voicequeue key without a TTL (other than the API keys) one, so nothing is kept
indefinitely.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job as RqJob

from shared import events, jobs, keys, queues
from shared.jobs import Job
from shared.redisio import text

log = logging.getLogger(__name__)


def rq_job_ids(conn: redis.Redis, job_id: str, record: Job | dict[str, Any] | None = None) -> list[str]:
    """The rq jobs carrying this job's stages and sentences, from the enqueue markers `shared.queues` sets."""
    plan = record.plan if isinstance(record, Job) else (record or {}).get("plan") or []
    stages = set(plan)
    for field in conn.hkeys(jobs.key(job_id)):
        name = text(field)
        if name.startswith(keys.SENTENCE_ENQUEUED_PREFIX):
            stages.add(f"tts{name[len(keys.SENTENCE_ENQUEUED_PREFIX):]}")
        elif name.startswith(keys.ENQUEUED_PREFIX):
            stages.add(name[len(keys.ENQUEUED_PREFIX):])
    return sorted(queues.rq_job_id(job_id, stage) for stage in stages)


def purge_job(conn: redis.Redis, job_id: str, *, keep_events_s: int = 0) -> int:
    """Remove everything stored for a job; returns the number of our keys deleted (rq's not counted).

    Queued, finished and failed rq jobs of every stage and sentence go too (a failed sentence job keeps
    its text in rq's hash). A running stage sees the job gone (`StageContext.cancelled`) and stops.
    `keep_events_s` > 0 keeps the event stream that long instead, so listeners get a final event.
    """
    record = jobs.fetch(conn, job_id)
    rq_ids = rq_job_ids(conn, job_id, record)
    for rq_id in rq_ids:
        _delete_rq_job(conn, rq_id)
    if rq_ids:
        conn.delete(*first_seen_keys(conn, rq_ids))
    doomed = [jobs.key(job_id)]
    if record is not None:
        doomed += [keys.blob(blob_id) for blob_id in record.blob_ids()]
    if keep_events_s > 0:
        conn.expire(events.stream_key(job_id), keep_events_s)
    else:
        doomed.append(events.stream_key(job_id))
    return int(conn.delete(*doomed))


def _delete_rq_job(conn: redis.Redis, rq_id: str, attempts: int = 3) -> None:
    """Delete one rq job, racing the worker that may be finishing it.

    The worker may delete the job between our fetch and delete (NoSuchJobError), or the execution rq lists
    for it (rq raises ValueError "Execution ... not found in Redis" from `Job.delete`: a live call's end was
    cut short by it, leaving its slot held). Fetching again sees the job as it is now."""
    for attempt in range(attempts):
        try:
            RqJob.fetch(rq_id, connection=conn).delete(remove_from_queue=True)
            return
        except (NoSuchJobError, InvalidJobOperation):
            return
        except ValueError:
            if attempt == attempts - 1:
                log.warning("rq job not deleted: its executions kept changing", extra={"rq_id": rq_id})
                conn.delete(RqJob.key_for(rq_id))  # our record is gone anyway; rq's hash would expire


def first_seen_keys(conn: redis.Redis, rq_ids: list[str]) -> list[str]:
    """rq's markers of a job it found between dequeue and start (`rq:queue:<q>:intermediate:first_seen:<id>`,
    a timestamp kept a day): they name the job, so a purge takes them too."""
    return [IntermediateQueue(queues.rq_key(q), conn).get_first_seen_key(rq_id)
            for q in queues.all_names() for rq_id in rq_ids]


def untimed(conn: redis.Redis, match: str = f"{keys.PREFIX}*", count: int = 1000) -> list[str]:
    """Keys matching `match` that have no TTL, other than the permanent ones (a SCAN: O(keyspace))."""
    found = []
    for raw in conn.scan_iter(match=match, count=count):
        key = text(raw)
        if any(fnmatch.fnmatchcase(key, p) for p in keys.PERMANENT):
            continue
        if conn.ttl(key) == -1:
            found.append(key)
    return found


def sweep(conn: redis.Redis, ttl_s: int, match: str = f"{keys.PREFIX}*") -> dict[str, int]:
    """Delete orphaned job hashes (no meta: written after their job was purged) and give every other key
    without a TTL `ttl_s`. Run it now and then (it SCANs the keyspace); returns what it did."""
    orphans = expired = 0
    for key in untimed(conn, match):
        if (fnmatch.fnmatchcase(key, keys.JOB_PATTERN) and text(conn.type(key)) == "hash"
                and not conn.hexists(key, keys.JOB_META)):
            orphans += conn.delete(key)
        elif conn.expire(key, ttl_s):
            expired += 1
    if orphans or expired:
        log.warning("retention sweep fixed keys without a TTL", extra={"orphans_deleted": orphans,
                                                                        "ttl_set": expired})
    return {"orphans_deleted": orphans, "ttl_set": expired}
