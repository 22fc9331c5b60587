"""Finding a tenant's passages for a question: embeddings and BM25, fused by reciprocal rank.

Each worker keeps every tenant's index it has used in memory (vectors as one matrix, BM25
postings) and asks Redis only for the tenant's version counter per question; a changed counter
(a document added, replaced or deleted) reloads the documents whose generation changed. So a
deleted document is gone from the very next answer, and a 10k-passage search costs a few
milliseconds, most of it embedding the question.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from numpy.typing import NDArray

from services.llm.knowledge import lexical
from shared import keys, knowledge
from shared.knowledge import DocStatus, Passage

Embed = Callable[[str], NDArray[np.float32]]
RRF_K = 60  # the usual reciprocal-rank-fusion constant: ranks matter, raw scores do not
DIM = 384


@dataclass
class Hit:
    document_id: str
    title: str
    passage: Passage
    score: float  # fused (RRF)
    dense: float  # cosine similarity of the question and the passage
    coverage: float  # share of the question's words (idf-weighted) the passage contains

    def relevance(self, coverage_weight: float) -> float:
        """Cosine plus a share of word coverage: a passage that also holds the question's words ranks above
        one that is only about the same subject."""
        return max(self.dense, 0.0) + coverage_weight * self.coverage


@dataclass
class DocPassages:
    generation: int
    title: str
    passages: list[Passage]
    vectors: NDArray[np.float32]
    terms: list[list[str]]


@dataclass
class TenantIndex:
    version: int
    docs: dict[str, DocPassages] = field(default_factory=dict)
    owners: list[tuple[str, int]] = field(default_factory=list)  # row -> (document id, passage index)
    matrix: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, DIM), dtype=np.float32))
    bm25: lexical.Bm25 | None = None

    def build(self) -> None:
        self.owners = [(doc_id, i) for doc_id, d in self.docs.items() for i in range(len(d.passages))]
        mats = [d.vectors for d in self.docs.values() if len(d.passages)]
        self.matrix = np.ascontiguousarray(np.concatenate(mats)) if mats else np.zeros((0, DIM), dtype=np.float32)
        self.bm25 = lexical.Bm25([t for d in self.docs.values() for t in d.terms])

    def __len__(self) -> int:
        return len(self.owners)


def _load_doc(conn: redis.Redis, tenant: str, doc: knowledge.Document) -> DocPassages | None:
    stored = knowledge.stored_passages(conn, tenant, doc.id)
    if stored is None:
        return None
    texts = [Passage.model_validate(p) for p in json.loads(stored["texts"])]
    raw = stored["vectors"]
    vectors = (np.frombuffer(raw, dtype=np.float32).reshape(len(texts), -1) if raw
               else np.zeros((len(texts), DIM), dtype=np.float32))  # indexed without the embedding model
    return DocPassages(int(stored["generation"]), doc.title, texts, vectors, json.loads(stored["terms"]))


class Library:
    """Every tenant's index this worker has used (least recently used ones are dropped past `max_tenants`)."""

    def __init__(self, embed: Embed | None, max_tenants: int = 32) -> None:
        self.embed = embed
        self.max_tenants = max_tenants
        self.indexes: OrderedDict[str, TenantIndex] = OrderedDict()
        self.lock = threading.Lock()

    def index(self, conn: redis.Redis, tenant: str) -> TenantIndex:
        current = knowledge.version(conn, tenant)
        with self.lock:
            cached = self.indexes.get(tenant)
            if cached is not None and cached.version == current:
                self.indexes.move_to_end(tenant)
                return cached
            fresh = self._reload(conn, tenant, current, cached)
            self.indexes[tenant] = fresh
            self.indexes.move_to_end(tenant)
            while len(self.indexes) > self.max_tenants:
                self.indexes.popitem(last=False)
            return fresh

    def _reload(self, conn: redis.Redis, tenant: str, version: int, old: TenantIndex | None) -> TenantIndex:
        fresh = TenantIndex(version)
        for doc in knowledge.listing(conn, tenant):
            if doc.status != DocStatus.READY and not doc.passages:
                continue
            kept = old.docs.get(doc.id) if old else None
            loaded = kept if kept is not None and kept.generation == _ready_generation(conn, tenant, doc) else \
                _load_doc(conn, tenant, doc)
            if loaded is not None:
                loaded.title = doc.title
                fresh.docs[doc.id] = loaded
        fresh.build()
        return fresh

    def search(self, conn: redis.Redis, tenant: str, queries: list[tuple[str, float]], k: int) -> list[Hit]:
        """The best `k` passages for the weighted `queries` (the question first, then it with context)."""
        index = self.index(conn, tenant)
        if not len(index) or index.bm25 is None:
            return []
        fused = np.zeros(len(index), dtype=np.float64)
        dense_best = np.full(len(index), -1.0, dtype=np.float32)
        coverage_best = np.zeros(len(index), dtype=np.float32)
        depth = min(len(index), max(50, 5 * k))
        for text, weight in queries:
            rankings: list[NDArray[Any]] = []
            # all-MiniLM-L6-v2 knows English only: on Chinese its similarities are noise, so BM25 decides alone.
            if self.embed is not None and len(index.matrix) and not lexical.CJK.search(text):
                dense = index.matrix @ self.embed(text)
                dense_best = np.maximum(dense_best, dense)
                rankings.append(dense)
            scores = index.bm25.score(lexical.terms(text))
            coverage_best = np.maximum(coverage_best, scores.coverage)
            if scores.bm25.any():
                rankings.append(scores.bm25)
            for ranking in rankings:
                top = np.argpartition(-ranking, depth - 1)[:depth] if depth < len(ranking) else np.arange(len(ranking))
                top = top[np.argsort(-ranking[top])]
                fused[top] += weight / (RRF_K + 1 + np.arange(len(top)))
        best = np.argsort(-fused)[:k]
        hits = []
        for row in best:
            if fused[row] <= 0:
                break
            doc_id, i = index.owners[row]
            doc = index.docs[doc_id]
            hits.append(Hit(doc_id, doc.title, doc.passages[i], float(fused[row]), float(dense_best[row]),
                            float(coverage_best[row])))
        return hits


def _ready_generation(conn: redis.Redis, tenant: str, doc: knowledge.Document) -> int | None:
    """The generation of the passages stored for `doc` (a document being re-indexed still answers with its
    last ready ones)."""
    found = conn.hget(keys.knowledge_passages(tenant, doc.id), keys.KB_PASSAGES_GENERATION)
    return int(found) if found is not None else None
