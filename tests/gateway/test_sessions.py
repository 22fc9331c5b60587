"""Conversations: a session remembers its turns for the LLM; GET and DELETE /v1/sessions/{id}."""

from __future__ import annotations

import secrets

import httpx

from tests.gateway.helpers import post_chat, read_sse


def _answer(client: httpx.Client, text: str, session_id: str) -> str:
    evs = read_sse(client, post_chat(client, text, session_id=session_id, speak=False)["events_url"])
    assert evs[-1]["event"] == "job.done", evs[-1]
    reply: str = evs[-1]["data"]["job"]["results"]["llm"]["text"]
    return reply


def test_two_turn_session_then_delete(client: httpx.Client) -> None:
    session_id = f"t-{secrets.token_hex(6)}"
    assert client.get(f"/v1/sessions/{session_id}").status_code == 404
    _answer(client, "Hello! My name is Oliver.", session_id)
    reply = _answer(client, "What is my name?", session_id)
    assert "oliver" in reply.lower(), reply

    session = client.get(f"/v1/sessions/{session_id}").json()
    assert session["id"] == session_id
    assert [t["role"] for t in session["turns"]] == ["user", "assistant", "user", "assistant"]
    assert session["turns"][0]["content"] == "Hello! My name is Oliver."
    assert session["turns"][3]["content"] == reply
    assert 0 < session["ttl_s"] <= 1800

    assert client.delete(f"/v1/sessions/{session_id}").status_code == 204
    assert client.get(f"/v1/sessions/{session_id}").status_code == 404
    assert client.delete(f"/v1/sessions/{session_id}").status_code == 404


def test_bad_session_ids(client: httpx.Client) -> None:
    for bad in ("a" * 65, "has space", "semi;colon", "ünïcode"):
        for method in ("GET", "DELETE"):
            r = client.request(method, f"/v1/sessions/{bad}")
            assert r.status_code == 400, (method, bad, r.text)
            assert r.json()["error"]["code"] == "invalid_session_id"
