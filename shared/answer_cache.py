"""Answers to context-free questions, kept in Redis so a repeated question skips the LLM.

The key is a hash of the normalised question (case, punctuation and spacing do
not matter), the system prompt, the model and the caller's language: changing
any of them can change the answer. An operator pre-loads common questions from
a FAQ file (YAML or JSONL) under the same keys, so a caller's question hits them;
FAQ questions can also be indexed by a sentence embedding, so a paraphrase
("When are you open?") finds the answer to "What are your opening hours?".

Every key belongs to a scope: a tenant (`vq:answer:t.<tenant>:<hash>`) or the
global set (`vq:answer:global:<hash>`). An answer the LLM gave one tenant is kept
under that tenant only: its wording may carry that tenant's facts. A lookup tries
the tenant's own scope first, then the global set, which only an operator fills
(`voicequeue faq load --global`). The hash leaves the scope out, so the global
twin of a tenant's key is the same key with its scope swapped.

Each answer says who wrote it: an operator (`faq`, trusted as written) or the model
(`model`, which the llm stage may check again before replaying it). Answers stored
before they were marked are read as `unmarked`, unless an FAQ index lists them or
they are in the global set, which only operators fill.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis
import yaml

from shared import keys, textnorm
from shared.redisio import text as as_text

PREFIX = keys.ANSWER_PREFIX
INDEX_PREFIX = keys.ANSWER_INDEX_PREFIX
GLOBAL = None  # the scope of answers every tenant may get; pass it explicitly, never by default
_GLOBAL_SCOPE = "global"

Embed = Callable[[str], "np.ndarray[Any, Any]"]

FAQ, MODEL, UNMARKED = "faq", "model", "unmarked"  # who wrote a cached answer


@dataclass(frozen=True)
class Cached:
    """An answer found in the cache, the key it was found under and who wrote it."""

    answer: str
    key: str
    by: str


class FaqError(ValueError):
    """A FAQ file that cannot be loaded; the message names the file and the entry."""


def normalize(question: str) -> str:
    return textnorm.normalize(question)


def scope(tenant: str | None) -> str:
    """`t.<tenant>`, or `global` for GLOBAL (the prefix keeps a tenant named "global" apart)."""
    return _GLOBAL_SCOPE if tenant is None else f"t.{tenant}"


def _digest(parts: list[str]) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def key_for(question: str, *, system_prompt: str, model: str, language: str | None, tenant: str | None) -> str:
    """The key of `tenant`'s answer (tenant=GLOBAL: the global set's)."""
    digest = _digest([normalize(question), system_prompt, model, (language or "").lower()])
    return f"{PREFIX}{scope(tenant)}:{digest}"


def index_for(*, system_prompt: str, model: str, language: str | None, tenant: str | None) -> str:
    """The hash of FAQ question vectors that can answer paraphrases for this scope, prompt, model and language."""
    digest = _digest([system_prompt, model, (language or "").lower()])
    return f"{INDEX_PREFIX}{scope(tenant)}:{digest}"


def global_twin(key: str) -> str:
    """The global set's key (or index) for the same question (or prompt, model and language) as `key`."""
    head, _, digest = key.rpartition(":")
    prefix = head.rsplit(":", 1)[0]
    return f"{prefix}:{_GLOBAL_SCOPE}:{digest}"


def lookup(conn: redis.Redis, key: str, index: str | None = None) -> Cached | None:
    """The answer under the tenant's `key`, else under its global twin.

    An unmarked answer counts as an operator's when `index` (the scope's FAQ index) lists its key, or when
    it is in the global set."""
    found = entry(conn, key)
    if found is not None:
        listed = found.by == UNMARKED and index is not None and bool(conn.hexists(index, key))
        return Cached(found.answer, key, FAQ) if listed else found
    twin = global_twin(key)
    found = entry(conn, twin) if twin != key else None
    return Cached(found.answer, twin, FAQ if found.by == UNMARKED else found.by) if found is not None else None


def paraphrase(
    conn: redis.Redis, index: str, encode: Callable[[], np.ndarray[Any, Any]], threshold: float
) -> tuple[str, float] | None:
    """`nearest` in the tenant's FAQ index, then in the global one; `encode` runs only if an index exists."""
    indexes = [i for i in dict.fromkeys([index, global_twin(index)]) if conn.exists(i)]
    if not indexes:
        return None  # no FAQ loaded: spare the embedding
    vector = encode()
    for found in (nearest(conn, i, vector, threshold) for i in indexes):
        if found is not None:
            return found
    return None


def nearest(conn: redis.Redis, index: str, vector: np.ndarray[Any, Any], threshold: float) -> tuple[str, float] | None:
    """(answer, similarity) of the indexed question closest to `vector`, if at least `threshold` alike."""
    fields = conn.hgetall(index)
    if not fields:
        return None
    keys = [as_text(k) for k in fields]
    matrix = np.stack([np.frombuffer(cast(bytes, v), dtype=np.float32) for v in fields.values()])
    scores = matrix @ vector.astype(np.float32)
    for i in np.argsort(-scores):
        if scores[i] < threshold:
            return None
        answer = get(conn, keys[i])
        if answer is not None:
            return answer, float(scores[i])
        conn.hdel(index, keys[i])  # its answer expired
    return None


def entry(conn: redis.Redis, key: str) -> Cached | None:
    value = conn.get(key)
    return decode(key, as_text(value)) if value is not None else None


def get(conn: redis.Redis, key: str) -> str | None:
    found = entry(conn, key)
    return found.answer if found is not None else None


def put(conn: redis.Redis, key: str, answer: str, ttl_s: int, *, by: str) -> None:
    conn.set(key, encode(answer, by), ex=ttl_s)


def encode(answer: str, by: str) -> str:
    return json.dumps({"vq_answer": 1, "by": by, "text": answer}, ensure_ascii=False)


def decode(key: str, value: str) -> Cached:
    """A stored answer; a plain string is one stored before answers said who wrote them."""
    if value.startswith('{"vq_answer"'):
        try:
            data = json.loads(value)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("text"), str) and data.get("by") in (FAQ, MODEL):
            return Cached(data["text"], key, data["by"])
    return Cached(value, key, UNMARKED)


def read_faq(path: Path) -> list[tuple[list[str], str]]:
    """(questions, answer) pairs from a YAML list or a JSONL file of {question | questions, answer} objects."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FaqError(f"{path}: cannot read: {exc}") from exc
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        items = _yaml_items(path, text)
    elif suffix in (".jsonl", ".ndjson"):
        items = _jsonl_items(path, text)
    else:
        raise FaqError(f"{path}: unknown FAQ format {suffix or '(none)'}; use .yaml, .yml or .jsonl")
    pairs = [_pair(path, where, item) for where, item in items]
    if not pairs:
        raise FaqError(f"{path}: no question/answer pairs")
    return pairs


def _yaml_items(path: Path, text: str) -> list[tuple[str, Any]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FaqError(f"{path}: not valid YAML: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("faq"), list):
        data = data["faq"]
    if not isinstance(data, list):
        raise FaqError(f"{path}: expected a list of {{question, answer}} entries (or a mapping with a 'faq' list)")
    return [(f"entry {n}", item) for n, item in enumerate(data, 1)]


def _jsonl_items(path: Path, text: str) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise FaqError(f"{path}: line {n}: not valid JSON: {exc.msg}") from exc
    return items


def _pair(path: Path, where: str, item: Any) -> tuple[list[str], str]:
    if not isinstance(item, dict):
        raise FaqError(f"{path}: {where}: expected an object with 'question' and 'answer'")
    questions = item.get("questions", [item.get("question")])
    answer = item.get("answer")
    if not isinstance(questions, list) or not questions or not all(
            isinstance(q, str) and normalize(q) for q in questions):
        raise FaqError(f"{path}: {where}: 'question' must be non-empty text (or 'questions' a list of them)")
    if not isinstance(answer, str) or not answer.strip():
        raise FaqError(f"{path}: {where}: 'answer' must be non-empty text")
    return questions, answer.strip()


def load_faq(
    conn: redis.Redis,
    path: Path,
    *,
    system_prompt: str,
    model: str,
    languages: Iterable[str | None],
    ttl_s: int,
    tenant: str | None,
    embed: Embed | None = None,
) -> int:
    """Store every FAQ answer under each of its questions and languages; returns the number of entries.

    `tenant` is the scope: one tenant's callers only, or GLOBAL (every tenant's, below its own).

    With `embed`, each question's vector also goes into the language's index, so
    a paraphrase can find it (`nearest`). The whole file is checked before
    anything is written, so a bad file changes nothing.
    """
    pairs = read_faq(path)
    vectors = {q: embed(q).astype(np.float32).tobytes() for qs, _ in pairs for q in qs} if embed else {}
    pipe = conn.pipeline(transaction=False)
    for language in list(languages):
        index = index_for(system_prompt=system_prompt, model=model, language=language, tenant=tenant)
        for questions, answer in pairs:
            for question in questions:
                key = key_for(question, system_prompt=system_prompt, model=model, language=language, tenant=tenant)
                put(pipe, key, answer, ttl_s, by=FAQ)
                if question in vectors:
                    pipe.hset(index, key, vectors[question])
        if vectors:
            pipe.expire(index, ttl_s)
    pipe.execute()
    return len(pairs)
