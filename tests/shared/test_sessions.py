"""Conversation sessions in a real Redis: order, trimming, idle TTL, atomic concurrent turns, deletion."""

from __future__ import annotations

import threading

import redis

from shared import sessions


def test_history_is_in_turn_order(conn: redis.Redis) -> None:
    sessions.append_turn(conn, "s1", "My name is Alice.", "Nice to meet you, Alice.", max_turns=10, ttl_s=60)
    sessions.append_turn(conn, "s1", "What is my name?", "Your name is Alice.", max_turns=10, ttl_s=60)
    assert sessions.history(conn, "s1", 10) == [
        {"role": "user", "content": "My name is Alice."},
        {"role": "assistant", "content": "Nice to meet you, Alice."},
        {"role": "user", "content": "What is my name?"},
        {"role": "assistant", "content": "Your name is Alice."},
    ]
    assert sessions.history(conn, "s1", 1) == [
        {"role": "user", "content": "What is my name?"},
        {"role": "assistant", "content": "Your name is Alice."},
    ]
    assert sessions.history(conn, "s1", 0) == []
    assert sessions.history(conn, "other", 10) == []


def test_only_the_last_turns_are_kept(conn: redis.Redis) -> None:
    for i in range(15):
        sessions.append_turn(conn, "s", f"q{i}", f"a{i}", max_turns=4, ttl_s=60)
    assert conn.llen(sessions.key("s")) == 8
    assert [m["content"] for m in sessions.history(conn, "s", 10)] == [
        "q11", "a11", "q12", "a12", "q13", "a13", "q14", "a14"]


def test_idle_ttl_restarts_on_each_turn(conn: redis.Redis) -> None:
    sessions.append_turn(conn, "s", "hello", "hi", max_turns=10, ttl_s=1800)
    assert 1790 <= conn.ttl(sessions.key("s")) <= 1800
    conn.expire(sessions.key("s"), 5)
    sessions.append_turn(conn, "s", "still there?", "yes", max_turns=10, ttl_s=1800)
    assert conn.ttl(sessions.key("s")) > 1790


def test_get_shows_turns_with_times_and_ttl(conn: redis.Redis) -> None:
    assert sessions.get(conn, "nope") is None
    sessions.append_turn(conn, "abc", "你好", "您好！", max_turns=10, ttl_s=600)
    got = sessions.get(conn, "abc")
    assert got is not None
    assert got["id"] == "abc" and 590 <= got["ttl_s"] <= 600
    assert [(t["role"], t["content"]) for t in got["turns"]] == [("user", "你好"), ("assistant", "您好！")]
    assert all(isinstance(t["ts"], float) for t in got["turns"])
    assert "你好".encode() in conn.lindex(sessions.key("abc"), 0)  # stored as UTF-8, not \\u escapes


def test_concurrent_turns_never_split_a_pair(redis_url: str, conn: redis.Redis) -> None:
    barrier = threading.Barrier(20)

    def turn(n: int) -> None:
        c = redis.Redis.from_url(redis_url)
        barrier.wait()
        for k in range(5):
            sessions.append_turn(c, "busy", f"user {n}.{k}", f"reply {n}.{k}", max_turns=1000, ttl_s=60)
        c.close()

    threads = [threading.Thread(target=turn, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    messages = sessions.history(conn, "busy", 1000)
    assert len(messages) == 200
    for user, reply in zip(messages[::2], messages[1::2], strict=True):
        assert user["role"] == "user" and reply["role"] == "assistant"
        assert reply["content"] == user["content"].replace("user", "reply")
    # each caller's own turns stay in the order it made them
    for n in range(20):
        mine = [m["content"] for m in messages if m["content"].startswith(f"user {n}.")]
        assert mine == [f"user {n}.{k}" for k in range(5)]


def test_delete(conn: redis.Redis) -> None:
    sessions.append_turn(conn, "gone", "hi", "hello", max_turns=10, ttl_s=60)
    assert sessions.delete(conn, "gone") is True
    assert sessions.get(conn, "gone") is None and sessions.history(conn, "gone", 10) == []
    assert sessions.delete(conn, "gone") is False
