"""Answers to context-free questions, kept in Redis so a repeated question skips the LLM.

The key is a hash of the normalised question (case, punctuation and spacing do
not matter), the system prompt, the model and the caller's language: changing
any of them can change the answer. An operator pre-loads common questions from
a FAQ file (YAML or JSONL) under the same keys, so a caller's question hits them;
FAQ questions can also be indexed by a sentence embedding, so a paraphrase
("When are you open?") finds the answer to "What are your opening hours?".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis
import yaml

from shared import textnorm

PREFIX = "vq:answer:"
INDEX_PREFIX = "vq:answer-index:"

Embed = Callable[[str], "np.ndarray[Any, Any]"]


class FaqError(ValueError):
    """A FAQ file that cannot be loaded; the message names the file and the entry."""


def normalize(question: str) -> str:
    return textnorm.normalize(question)


def key_for(question: str, *, system_prompt: str, model: str, language: str | None) -> str:
    parts = [normalize(question), system_prompt, model, (language or "").lower()]
    return PREFIX + hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def index_for(*, system_prompt: str, model: str, language: str | None) -> str:
    """The hash of FAQ question vectors that can answer paraphrases for this prompt, model and language."""
    parts = [system_prompt, model, (language or "").lower()]
    return INDEX_PREFIX + hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def nearest(conn: redis.Redis, index: str, vector: np.ndarray[Any, Any], threshold: float) -> tuple[str, float] | None:
    """(answer, similarity) of the indexed question closest to `vector`, if at least `threshold` alike."""
    fields = conn.hgetall(index)
    if not fields:
        return None
    keys = [k.decode() if isinstance(k, bytes) else k for k in fields]
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


def get(conn: redis.Redis, key: str) -> str | None:
    value = conn.get(key)
    return value.decode() if isinstance(value, bytes) else value


def put(conn: redis.Redis, key: str, answer: str, ttl_s: int) -> None:
    conn.set(key, answer, ex=ttl_s)


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
    embed: Embed | None = None,
) -> int:
    """Store every FAQ answer under each of its questions and languages; returns the number of entries.

    With `embed`, each question's vector also goes into the language's index, so
    a paraphrase can find it (`nearest`). The whole file is checked before
    anything is written, so a bad file changes nothing.
    """
    pairs = read_faq(path)
    vectors = {q: embed(q).astype(np.float32).tobytes() for qs, _ in pairs for q in qs} if embed else {}
    pipe = conn.pipeline(transaction=False)
    for language in list(languages):
        index = index_for(system_prompt=system_prompt, model=model, language=language)
        for questions, answer in pairs:
            for question in questions:
                key = key_for(question, system_prompt=system_prompt, model=model, language=language)
                put(pipe, key, answer, ttl_s)
                if question in vectors:
                    pipe.hset(index, key, vectors[question])
        if vectors:
            pipe.expire(index, ttl_s)
    pipe.execute()
    return len(pairs)
