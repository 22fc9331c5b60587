"""First sentence first: on `tts:live` a reply's first sentence goes ahead of other replies' later ones."""

from __future__ import annotations

import redis
from rq import Queue

from shared import jobs, queues
from tests.tts.conftest import make_settings


def new_job(conn: redis.Redis, priority: str = "live") -> str:
    return jobs.create(conn, kind="chat", priority=priority, inputs={"text": "Hi"}, options={}, ttl_s=600)


def label(rq_id: str, names: dict[str, str]) -> str:
    """'A1' for the rq job of job A's sentence 1."""
    for job_id, short in names.items():
        for seq in range(5):
            if rq_id == queues.rq_job_id(job_id, f"tts{seq}"):
                return f"{short}{seq}"
    raise AssertionError(rq_id)


def test_first_sentences_jump_ahead_of_later_ones(conn: redis.Redis) -> None:
    settings = make_settings()
    a, b, c = new_job(conn), new_job(conn), new_job(conn)
    names = {a: "A", b: "B", c: "C"}
    # A's reply is streaming (three sentences queued) when B, then C, finish their first sentences.
    for job_id, seq in [(a, 0), (a, 1), (a, 2), (b, 0), (b, 1), (c, 0)]:
        assert queues.enqueue_chunk(conn, settings, job_id, seq, f"Sentence {seq}.", "live")
    queue = Queue(queues.name("tts", "live"), connection=conn)
    order = [label(i, names) for i in queue.job_ids]
    assert sorted(order) == ["A0", "A1", "A2", "B0", "B1", "C0"]
    firsts, later = order[:3], order[3:]
    assert set(firsts) == {"A0", "B0", "C0"}, order
    assert later == ["A1", "A2", "B1"], order  # each reply's own sentences keep their order

    # What a worker takes first is a first sentence, not A's second.
    job, _ = Queue.dequeue_any([queue], timeout=None, connection=conn)  # type: ignore[misc]
    assert label(job.id, names).endswith("0")


def test_batch_sentences_keep_arrival_order(conn: redis.Redis) -> None:
    settings = make_settings()
    a, b = new_job(conn, "batch"), new_job(conn, "batch")
    for job_id, seq in [(a, 0), (a, 1), (b, 0)]:
        assert queues.enqueue_chunk(conn, settings, job_id, seq, f"Sentence {seq}.", "batch")
    queue = Queue(queues.name("tts", "batch"), connection=conn)
    assert [label(i, {a: "A", b: "B"}) for i in queue.job_ids] == ["A0", "A1", "B0"]
