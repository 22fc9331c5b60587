"""The indexing job (`shared.knowledge.INDEX_TASK`, on llm:batch): a document's bytes to passages,
their embeddings and lexical terms, committed in one step so answers switch from the old passages
to the new ones at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import redis
from numpy.typing import NDArray

from services.llm.knowledge import extract, lexical, passages
from shared import knowledge

log = logging.getLogger(__name__)

Embed = Callable[[str], NDArray[np.float32]]


def passage_text(title: str, passage: knowledge.Passage) -> str:
    """What is embedded and matched: the passage with its document title and heading, so "Refunds take
    five days" is found for "returns policy" too."""
    context = " > ".join(p for p in (title, passage.heading) if p)
    return f"{context}: {passage.text}" if context else passage.text


def run(conn: redis.Redis, embed: Embed | None, tenant: str, doc_id: str, generation: int, max_size: int) -> str:
    """Index one generation of a document; returns what happened (ready, failed, superseded)."""
    start = time.perf_counter()
    data = knowledge.source(conn, tenant, doc_id, generation)
    doc = knowledge.get(conn, tenant, doc_id)
    if data is None or doc is None or doc.generation != generation:
        return "superseded"  # replaced or deleted since it was queued: the newer job (if any) does it
    try:
        split = passages.split(doc_id, extract.sections(doc.kind, data), max_size)
    except extract.ExtractError as exc:
        knowledge.fail(conn, tenant, doc_id, generation, "unreadable", str(exc))
        return "failed"
    if not split.passages:
        knowledge.fail(conn, tenant, doc_id, generation, "no_passages", "the document has no sentences to index")
        return "failed"
    texts = [passage_text(doc.title, p) for p in split.passages]
    vectors = (np.stack([embed(t) for t in texts]).astype(np.float32) if embed is not None
               else np.zeros((len(texts), 0), dtype=np.float32))
    terms = [lexical.terms(t) for t in texts]
    ok = knowledge.commit(conn, tenant, doc_id, generation, passages=split.passages, vectors=vectors.tobytes(),
                          terms=terms, characters=split.characters, removed_sentences=split.removed_sentences,
                          index_s=time.perf_counter() - start)
    log.info("document indexed" if ok else "document superseded while indexing",
             extra={"tenant": tenant, "document": doc_id, "generation": generation, "passages": len(texts),
                    "removed_sentences": split.removed_sentences, "seconds": round(time.perf_counter() - start, 3)})
    return "ready" if ok else "superseded"
