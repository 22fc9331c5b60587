"""Tenant-scoped answer cache and FAQ, through the real gateway with two API keys and a real LLM.

Tenant A's answer to a question, whether the LLM wrote it or A's own FAQ holds it, is never
given to tenant B asking the same words; a FAQ an operator loads with `--global` serves both,
below each tenant's own.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.gateway import keystore
from tests.conftest import running_redis
from tests.gateway.helpers import read_sse
from tests.reliability.partial import llm_server, partial_stack
from tests.stack import Stack, _voicequeue

QUESTION = "What is the capital of France? Answer in one short sentence."
SECRET = "Acme members get free shipping with code ACME-7731."


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with llm_server(tmp_path_factory.mktemp("tcache-llm")) as llm:
        env = {"VQ_LLM_BASE_URL": llm, "VQ_LLM_MAX_TOKENS": "32", "VQ_LLM_TEMPERATURE": "0"}
        with running_redis(tmp_path_factory.mktemp("tcache-redis")) as url, \
                partial_stack(url, tmp_path_factory.mktemp("tcache-logs"), ("llm",), env) as s:
            yield s


@pytest.fixture(scope="module")
def keys(own: Stack) -> dict[str, str]:
    db = redis.Redis.from_url(own.redis_url)
    return {"a": keystore.create(db, "tenant-a")[0], "b": keystore.create(db, "tenant-b")[0]}


def ask(stack: Stack, key: str, text: str) -> dict[str, Any]:
    """The finished job record of a text-only chat."""
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
        r = c.post("/v1/chat", json={"text": text, "speak": False, "language": "en"})
        assert r.status_code == 202, r.text
        final = read_sse(c, r.json()["events_url"])[-1]
    assert final["event"] == "job.done", final
    job: dict[str, Any] = final["data"]["job"]
    return job


def faq_load(stack: Stack, tmp: Path, answer: str, question: str, *scope: str) -> None:
    faq = tmp / "faq.yaml"
    faq.write_text(f"- question: {question}\n  answer: {answer}\n")
    env = {**os.environ, **stack.env}
    done = subprocess.run([_voicequeue(), "faq", "load", str(faq), "--language", "en", *scope],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_tenant_b_never_gets_tenant_a_cached_answer(own: Stack, keys: dict[str, str]) -> None:
    first_a = ask(own, keys["a"], QUESTION)["results"]["llm"]
    again_a = ask(own, keys["a"], QUESTION)["results"]["llm"]
    assert first_a["cache"] == "miss" and "paris" in first_a["text"].lower()
    assert again_a["cache"] == "hit" and again_a["text"] == first_a["text"]
    first_b = ask(own, keys["b"], QUESTION)["results"]["llm"]
    assert first_b["cache"] == "miss"  # B's answer came from the LLM, not from A's cache entry
    assert ask(own, keys["b"], QUESTION)["results"]["llm"]["cache"] == "hit"


def test_a_tenant_faq_serves_only_that_tenant_and_a_global_one_serves_all(
        own: Stack, keys: dict[str, str], tmp_path: Path) -> None:
    question = "Do members get free shipping?"
    faq_load(own, tmp_path, SECRET, question, "--tenant", "tenant-a")
    got_a = ask(own, keys["a"], question)["results"]["llm"]
    assert got_a["cache"] == "hit" and got_a["text"] == SECRET
    got_b = ask(own, keys["b"], question)["results"]["llm"]
    assert got_b["cache"] == "miss" and "ACME-7731" not in got_b["text"]

    common = "We are open from nine to six, Monday to Friday."
    faq_load(own, tmp_path, common, "When are you open?", "--global")
    for key in keys.values():
        got = ask(own, key, "when are you open")["results"]["llm"]
        assert got["cache"] == "hit" and got["text"] == common
    # A's own FAQ still comes before the global set.
    faq_load(own, tmp_path, "Acme opens at seven.", "When are you open?", "--tenant", "tenant-a")
    assert ask(own, keys["a"], "When are you open?")["results"]["llm"]["text"] == "Acme opens at seven."
    assert ask(own, keys["b"], "When are you open?")["results"]["llm"]["text"] == common
