"""A tenant's knowledge base in Redis: its documents, their indexing state and their passages.

The gateway stores an uploaded document (`put`) and enqueues its indexing as a job on the
llm workers' batch queue; the llm worker splits, embeds and indexes it (`services.llm.knowledge`)
and `commit`s the passages. Each upload of a document id is a new *generation*: the job of an
older generation, or one that finishes after a delete, commits nothing. Every change to what can
be answered bumps the tenant's version counter, which is how retrieval caches know to reload: a
deleted document stops answering on the very next question.

Documents are kept until deleted (no TTL): `keys.PERMANENT` spares them from the retention sweep.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from enum import StrEnum
from typing import Any

import redis
from rq import Queue

from shared import keys, queues
from shared.config import CommonSettings
from shared.jobs import Record
from shared.redisio import text, transaction

INDEX_TASK = "shared.knowledge.perform_index"
INDEX_QUEUE = queues.name("llm", "batch")  # indexing never delays a live turn
DOC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
KINDS = ("text", "markdown", "html", "pdf")


class DocStatus(StrEnum):
    INDEXING = "indexing"
    READY = "ready"
    FAILED = "failed"


class DocError(Record):
    reason: str
    message: str


class Document(Record):
    """A document as `GET /v1/knowledge/documents/{id}` shows it."""

    id: str
    title: str
    kind: str
    filename: str | None = None
    status: DocStatus = DocStatus.INDEXING
    generation: int = 1
    bytes: int = 0
    sha256: str = ""
    passages: int = 0
    characters: int = 0
    removed_sentences: int = 0
    error: DocError | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    indexed_at: float | None = None
    index_s: float | None = None


class Passage(Record):
    """One passage of a document: the words a caller's question is matched against and the model quotes."""

    id: str
    heading: str = ""
    text: str


def doc_id_for(title: str) -> str:
    """A stable id from a title or file name (re-adding it replaces the document): its slug, plus a short
    hash when letters outside ASCII were dropped (so 营业时间.md and 配送.md do not meet as "md")."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", title.lower()).strip("-._")[:96]
    digest = hashlib.sha256(title.encode()).hexdigest()
    if not slug:
        return f"doc-{digest[:16]}"
    return slug if title.isascii() else f"{slug}-{digest[:8]}"


def check_doc_id(doc_id: str) -> str:
    if not DOC_ID.match(doc_id):
        raise ValueError("a document id is 1-128 characters of [A-Za-z0-9._-], starting with a letter or digit")
    return doc_id


def _meta(conn: redis.Redis | redis.client.Pipeline, tenant: str, doc_id: str) -> Document | None:
    raw = conn.hget(keys.knowledge_docs(tenant), doc_id)
    return Document.model_validate_json(raw) if raw is not None else None


def _dump(doc: Document) -> str:
    return json.dumps(doc.model_dump(mode="json"), ensure_ascii=False)


def put(conn: redis.Redis, settings: CommonSettings, tenant: str, *, doc_id: str, title: str, kind: str,
        data: bytes, filename: str | None = None, enqueue: bool = True) -> Document:
    """Store a document's bytes and enqueue its indexing; an existing id gets a new generation, whose
    passages replace the old ones once indexed (the old ones answer until then). `enqueue=False`: the
    caller commits passages it made itself (the benchmark's synthetic ones)."""
    now = time.time()
    docs = keys.knowledge_docs(tenant)

    def write(pipe: redis.client.Pipeline) -> Document:
        old = _meta(pipe, tenant, doc_id)
        doc = Document(id=doc_id, title=title, kind=kind, filename=filename, status=DocStatus.INDEXING,
                       generation=(old.generation + 1) if old else 1, bytes=len(data),
                       sha256=hashlib.sha256(data).hexdigest(), passages=old.passages if old else 0,
                       created_at=old.created_at if old else now, updated_at=now)
        pipe.multi()
        pipe.hset(docs, doc_id, _dump(doc))
        pipe.hset(keys.knowledge_source(tenant, doc_id),
                  mapping={keys.KB_SOURCE_DATA: data, keys.KB_SOURCE_GENERATION: doc.generation})
        if not enqueue:
            return doc
        Queue(INDEX_QUEUE, connection=conn).enqueue(
            INDEX_TASK, tenant, doc_id, doc.generation,
            job_id=index_job_id(tenant, doc_id, doc.generation),
            job_timeout=int(settings.job_timeout_llm_s), result_ttl=0, failure_ttl=settings.job_ttl_s,
            ttl=settings.job_ttl_s, description=f"index {tenant}/{doc_id}#{doc.generation}", pipeline=pipe)
        return doc

    return transaction(conn, write, docs)


def index_job_id(tenant: str, doc_id: str, generation: int) -> str:
    """rq ids allow only [A-Za-z0-9_-]: a digest names the job."""
    return "kb_" + hashlib.sha256(f"{tenant}\0{doc_id}\0{generation}".encode()).hexdigest()[:32]


def get(conn: redis.Redis, tenant: str, doc_id: str) -> Document | None:
    return _meta(conn, tenant, doc_id)


def listing(conn: redis.Redis, tenant: str) -> list[Document]:
    docs = [Document.model_validate_json(v) for v in conn.hgetall(keys.knowledge_docs(tenant)).values()]
    return sorted(docs, key=lambda d: (d.created_at, d.id))


def count(conn: redis.Redis, tenant: str) -> int:
    return int(conn.hlen(keys.knowledge_docs(tenant)))


def delete(conn: redis.Redis, tenant: str, doc_id: str) -> bool:
    """Remove a document and its passages; it answers nothing from the next question on."""
    docs = keys.knowledge_docs(tenant)

    def remove(pipe: redis.client.Pipeline) -> bool:
        if not pipe.hexists(docs, doc_id):
            return False
        pipe.multi()
        pipe.hdel(docs, doc_id)
        pipe.delete(keys.knowledge_source(tenant, doc_id), keys.knowledge_passages(tenant, doc_id))
        pipe.incr(keys.knowledge_version(tenant))
        return True

    return transaction(conn, remove, docs)


def source(conn: redis.Redis, tenant: str, doc_id: str, generation: int) -> bytes | None:
    """The bytes of that generation of the document, or None once it was replaced or deleted."""
    found = conn.hmget(keys.knowledge_source(tenant, doc_id), [keys.KB_SOURCE_DATA, keys.KB_SOURCE_GENERATION])
    data, gen = found[0], found[1]
    if data is None or gen is None or int(gen) != generation:
        return None
    return data if isinstance(data, bytes) else data.encode()


def commit(conn: redis.Redis, tenant: str, doc_id: str, generation: int, *, passages: list[Passage],
           vectors: bytes, terms: list[list[str]], characters: int, removed_sentences: int,
           index_s: float) -> bool:
    """Make a generation's passages the document's answerable ones, unless it was replaced or deleted
    meanwhile (then nothing is written; returns False)."""
    docs = keys.knowledge_docs(tenant)

    def write(pipe: redis.client.Pipeline) -> bool:
        doc = _meta(pipe, tenant, doc_id)
        if doc is None or doc.generation != generation:
            return False
        doc.status, doc.passages, doc.characters = DocStatus.READY, len(passages), characters
        doc.removed_sentences, doc.error = removed_sentences, None
        doc.indexed_at, doc.index_s = time.time(), round(index_s, 3)
        pipe.multi()
        pipe.hset(keys.knowledge_passages(tenant, doc_id), mapping={
            keys.KB_PASSAGES_GENERATION: generation,
            keys.KB_PASSAGES_TEXTS: json.dumps([p.wire() for p in passages], ensure_ascii=False),
            keys.KB_PASSAGES_VECTORS: vectors,
            keys.KB_PASSAGES_TERMS: json.dumps(terms, ensure_ascii=False),
        })
        pipe.hset(docs, doc_id, _dump(doc))
        pipe.incr(keys.knowledge_version(tenant))
        return True

    return transaction(conn, write, docs)


def fail(conn: redis.Redis, tenant: str, doc_id: str, generation: int, reason: str, message: str) -> bool:
    """Mark that generation failed (its earlier passages, if any, are dropped: they are not what was sent)."""
    docs = keys.knowledge_docs(tenant)

    def write(pipe: redis.client.Pipeline) -> bool:
        doc = _meta(pipe, tenant, doc_id)
        if doc is None or doc.generation != generation:
            return False
        doc.status, doc.passages, doc.error = DocStatus.FAILED, 0, DocError(reason=reason, message=message)
        doc.indexed_at = time.time()
        pipe.multi()
        pipe.hset(docs, doc_id, _dump(doc))
        pipe.delete(keys.knowledge_passages(tenant, doc_id))
        pipe.incr(keys.knowledge_version(tenant))
        return True

    return transaction(conn, write, docs)


def version(conn: redis.Redis, tenant: str) -> int:
    value = conn.get(keys.knowledge_version(tenant))
    return int(value) if value is not None else 0


def stored_passages(conn: redis.Redis, tenant: str, doc_id: str) -> dict[str, Any] | None:
    """A document's indexed passages as stored: generation, texts (JSON), vectors (bytes), terms (JSON)."""
    raw = conn.hgetall(keys.knowledge_passages(tenant, doc_id))
    if not raw:
        return None
    return {text(k): v for k, v in raw.items()}


def perform_index(tenant: str, doc_id: str, generation: int) -> None:
    """The function an indexing job names; only `voicequeue worker llm` runs it (`shared.stage.perform`)."""
    raise RuntimeError(f"indexing {tenant}/{doc_id}: knowledge jobs run only in `voicequeue worker llm`")
