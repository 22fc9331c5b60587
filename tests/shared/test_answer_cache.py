"""The answer cache: keys, TTL, and FAQ files (YAML, JSONL, bad files) in a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from shared import answer_cache

KEY = {"system_prompt": "Be brief.", "model": "m1", "language": "en", "tenant": None}
VOICEQUEUE = str(Path(sys.executable).parent / "voicequeue")


def key(question: str, **changes: str | None) -> str:
    return answer_cache.key_for(question, **{**KEY, **changes})  # type: ignore[arg-type]


def test_case_punctuation_and_spacing_do_not_matter() -> None:
    same = ["What are your opening hours?", "what are your opening hours", "  WHAT ARE  your\topening hours?!  ",
            "What, are your opening-hours."]
    assert len({key(q) for q in same}) == 1
    assert key("What are your closing hours?") != key(same[0])
    assert key("我的订单在哪里？") == key("我的订单在哪里") != key("我的订单在那里")


def test_key_depends_on_prompt_model_and_language() -> None:
    base = key("Where is my order?")
    assert base.startswith("vq:answer:")
    assert key("Where is my order?", system_prompt="Be verbose.") != base
    assert key("Where is my order?", model="m2") != base
    assert key("Where is my order?", language="de") != base
    assert key("Where is my order?", language=None) != base
    assert key("Where is my order?", language="EN") == base


def test_put_get_and_ttl(conn: redis.Redis) -> None:
    k = key("Where is my order?")
    assert answer_cache.get(conn, k) is None
    answer_cache.put(conn, k, "It ships tomorrow. 谢谢！", ttl_s=120, by=answer_cache.MODEL)
    assert answer_cache.get(conn, k) == "It ships tomorrow. 谢谢！"
    assert 110 <= conn.ttl(k) <= 120


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_yaml_faq(conn: redis.Redis, tmp_path: Path) -> None:
    faq = write(tmp_path / "faq.yaml", """
- question: What are your opening hours?
  answer: We are open from nine to six, Monday to Friday.
- questions: ["How do I reset my password?", "I forgot my password"]
  answer: Use the "forgot password" link on the sign-in page.
""")
    count = answer_cache.load_faq(conn, faq, system_prompt="Be brief.", model="m1", languages=["en", None],
                                  ttl_s=3600, tenant=answer_cache.GLOBAL)
    assert count == 2
    assert answer_cache.get(conn, key("what are your OPENING hours")) == (
        "We are open from nine to six, Monday to Friday.")
    assert answer_cache.get(conn, key("I forgot my password!", language=None)) == (
        'Use the "forgot password" link on the sign-in page.')
    assert answer_cache.get(conn, key("What are your opening hours?", language="de")) is None
    assert answer_cache.get(conn, key("What are your opening hours?", model="other")) is None
    assert 3590 <= conn.ttl(key("How do I reset my password")) <= 3600


def test_load_jsonl_faq_and_a_faq_mapping(conn: redis.Redis, tmp_path: Path) -> None:
    faq = write(tmp_path / "faq.jsonl", "\n".join([
        json.dumps({"question": "Where is my order?", "answer": "Let me check your order number."}),
        "",
        json.dumps({"question": "退货政策是什么？", "answer": "三十天内可以无理由退货。"}, ensure_ascii=False),
    ]))
    assert answer_cache.load_faq(conn, faq, system_prompt="Be brief.", model="m1", languages=["zh"],
                                 ttl_s=60, tenant=answer_cache.GLOBAL) == 2
    assert answer_cache.get(conn, key("退货政策是什么", language="zh")) == "三十天内可以无理由退货。"
    mapping = write(tmp_path / "faq.yml", "faq:\n  - {question: Hi there, answer: Hello!}\n")
    assert answer_cache.load_faq(conn, mapping, system_prompt="Be brief.", model="m1", languages=["en"],
                                 ttl_s=60, tenant=answer_cache.GLOBAL) == 1


@pytest.mark.parametrize(("name", "text", "message"), [
    ("faq.yaml", "- question: [unclosed\n", "not valid YAML"),
    ("faq.yaml", "question: a\nanswer: b\n", "expected a list"),
    ("faq.yaml", "- question: Hi\n", "entry 1: 'answer' must be non-empty"),
    ("faq.yaml", "- question: '?!'\n  answer: x\n", "entry 1: 'question' must be non-empty"),
    ("faq.yaml", "", "expected a list"),
    ("faq.jsonl", '{"question": "a", "answer": "b"}\n{"question": "c", "answer": ', "line 2: not valid JSON"),
    ("faq.jsonl", '["a", "b"]\n', "line 1: expected an object"),
    ("faq.jsonl", "\n\n", "no question/answer pairs"),
    ("faq.csv", "a,b\n", "unknown FAQ format .csv"),
])
def test_bad_faq_files_are_refused_and_nothing_is_written(
        conn: redis.Redis, tmp_path: Path, name: str, text: str, message: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(answer_cache.FaqError, match=message) as err:
        answer_cache.load_faq(conn, path, system_prompt="p", model="m", languages=["en"], ttl_s=60,
                              tenant=answer_cache.GLOBAL)
    assert str(path) in str(err.value)
    assert conn.dbsize() == 0


def test_missing_file(conn: redis.Redis, tmp_path: Path) -> None:
    with pytest.raises(answer_cache.FaqError, match="cannot read"):
        answer_cache.load_faq(conn, tmp_path / "nope.yaml", system_prompt="p", model="m", languages=["en"],
                              ttl_s=60, tenant=answer_cache.GLOBAL)


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VQ_REDIS_URL": redis_url}
    return subprocess.run([VOICEQUEUE, "faq", "load", *args], capture_output=True, text=True, timeout=60, env=env)


def test_cli_loads_with_the_worker_settings(conn: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    from services.llm.config import LlmSettings

    faq = write(tmp_path / "faq.yaml", "- question: What are your opening hours?\n  answer: Nine to six.\n")
    result = cli(redis_url, str(faq), "--global")
    assert result.returncode == 0, result.stderr
    assert "loaded 1 FAQ answers for every tenant (global)" in result.stdout
    settings = LlmSettings()
    for language in ("en", None):
        k = answer_cache.key_for("what are your opening hours", system_prompt=settings.llm_system_prompt,
                                 model=settings.llm_model, language=language, tenant=answer_cache.GLOBAL)
        assert answer_cache.get(conn, k) == "Nine to six."
        assert conn.ttl(k) > 29 * 24 * 3600
    result = cli(redis_url, str(faq), "--language", "fr", "--ttl", "100", "--tenant", "acme")
    assert result.returncode == 0, result.stderr
    assert "for tenant acme" in result.stdout
    k = answer_cache.key_for("What are your opening hours?", system_prompt=settings.llm_system_prompt,
                             model=settings.llm_model, language="fr", tenant="acme")
    assert 90 <= conn.ttl(k) <= 100
    assert answer_cache.get(conn, answer_cache.key_for(
        "What are your opening hours?", system_prompt=settings.llm_system_prompt, model=settings.llm_model,
        language="fr", tenant="other")) is None


def test_cli_wants_a_scope_named(conn: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    faq = write(tmp_path / "faq.yaml", "- question: Hi\n  answer: Hello.\n")
    for args, message in [((), "one of the arguments --tenant --global is required"),
                          (("--tenant", "a", "--global"), "not allowed with argument"),
                          (("--tenant", "bad name!"), "a tenant name is")]:
        result = cli(redis_url, str(faq), *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    assert conn.dbsize() == 0


def test_tenant_answers_stay_with_their_tenant_and_global_ones_serve_all(conn: redis.Redis) -> None:
    mine, theirs, shared = key("Where is my order?", tenant="a"), key("Where is my order?", tenant="b"), \
        key("Where is my order?")
    assert len({mine, theirs, shared}) == 3
    assert mine.startswith("vq:answer:t.a:") and shared.startswith("vq:answer:global:")
    assert key("Where is my order?", tenant="global") != shared  # a tenant named "global" is still a tenant
    answer_cache.put(conn, mine, "Order 17 ships tomorrow.", ttl_s=60, by=answer_cache.MODEL)
    assert answer_cache.lookup(conn, mine) == answer_cache.Cached("Order 17 ships tomorrow.", mine, "model")
    assert answer_cache.lookup(conn, theirs) is None
    answer_cache.put(conn, shared, "Let me look that up.", ttl_s=60, by=answer_cache.FAQ)
    assert answer_cache.lookup(conn, theirs) == answer_cache.Cached("Let me look that up.", shared, "faq")
    assert answer_cache.lookup(conn, mine).answer == "Order 17 ships tomorrow."  # type: ignore[union-attr]
    assert answer_cache.lookup(conn, shared) == answer_cache.Cached("Let me look that up.", shared, "faq")


def test_each_answer_says_who_wrote_it(conn: redis.Redis, tmp_path: Path) -> None:
    faq = write(tmp_path / "faq.yaml", "- question: What are your opening hours?\n  answer: Nine to six.\n")
    answer_cache.load_faq(conn, faq, system_prompt="Be brief.", model="m1", languages=["en"], ttl_s=60,
                          tenant="a")
    hours = key("What are your opening hours?", tenant="a")
    assert answer_cache.lookup(conn, hours) == answer_cache.Cached("Nine to six.", hours, "faq")
    order = key("Where is my order?", tenant="a")
    answer_cache.put(conn, order, '{"vq_answer": 1} is not how I answer', ttl_s=60, by=answer_cache.MODEL)
    assert answer_cache.lookup(conn, order) == answer_cache.Cached('{"vq_answer": 1} is not how I answer', order,
                                                                   "model")


def test_answers_stored_before_they_were_marked(conn: redis.Redis) -> None:
    """A plain string is unmarked: an operator's only where an FAQ index lists it, or in the global set."""
    scope = {"system_prompt": "Be brief.", "model": "m1", "language": "en"}
    index = answer_cache.index_for(**scope, tenant="a")
    invented, listed, shared = key("Shipping?", tenant="a"), key("Hours?", tenant="a"), key("Returns?")
    conn.set(invented, "Shipping costs $5.")
    conn.set(listed, "Nine to six.")
    conn.hset(index, listed, b"\0" * 8)
    conn.set(shared, "Thirty days.")
    assert answer_cache.lookup(conn, invented, index) == answer_cache.Cached("Shipping costs $5.", invented,
                                                                             "unmarked")
    assert answer_cache.lookup(conn, listed, index) == answer_cache.Cached("Nine to six.", listed, "faq")
    assert answer_cache.lookup(conn, listed) == answer_cache.Cached("Nine to six.", listed, "unmarked")
    tenants = key("Returns?", tenant="a")
    assert answer_cache.lookup(conn, tenants, index) == answer_cache.Cached("Thirty days.", shared, "faq")


def test_paraphrase_looks_in_the_tenant_index_then_the_global_one(conn: redis.Redis, tmp_path: Path) -> None:
    import numpy as np

    vectors = {"When are you open?": np.array([1.0, 0.0], dtype=np.float32),
               "Where is my parcel?": np.array([0.0, 1.0], dtype=np.float32)}
    own = write(tmp_path / "a.yaml", "- question: When are you open?\n  answer: Acme opens at seven.\n")
    common = write(tmp_path / "g.yaml", "- question: When are you open?\n  answer: Nine to six.\n"
                                        "- question: Where is my parcel?\n  answer: Let me check.\n")
    scope = {"system_prompt": "p", "model": "m", "languages": ["en"], "ttl_s": 60, "embed": vectors.__getitem__}
    answer_cache.load_faq(conn, own, tenant="a", **scope)  # type: ignore[arg-type]
    answer_cache.load_faq(conn, common, tenant=answer_cache.GLOBAL, **scope)  # type: ignore[arg-type]
    calls = []

    def find(tenant: str, vector: np.ndarray) -> str | None:  # type: ignore[type-arg]
        index = answer_cache.index_for(system_prompt="p", model="m", language="en", tenant=tenant)
        found = answer_cache.paraphrase(conn, index, lambda: calls.append(1) or vector, 0.9)
        return found[0] if found else None

    assert find("a", vectors["When are you open?"]) == "Acme opens at seven."
    assert find("b", vectors["When are you open?"]) == "Nine to six."
    assert find("a", vectors["Where is my parcel?"]) == "Let me check."
    conn.flushdb()
    calls.clear()
    assert find("a", vectors["Where is my parcel?"]) is None and calls == []  # no index: no embedding


def test_cli_bad_file_exits_2_with_a_clear_message(conn: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    faq = write(tmp_path / "faq.jsonl", '{"question": "Hi"}\n')
    result = cli(redis_url, str(faq), "--global")
    assert result.returncode == 2
    assert "line 1: 'answer' must be non-empty text" in result.stderr and str(faq) in result.stderr
    assert "Traceback" not in result.stderr
    assert conn.dbsize() == 0
