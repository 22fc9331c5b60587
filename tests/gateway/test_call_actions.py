"""Actions with the real local model on the real stack: "I want to talk to a person" transfers the caller,
as a turn and on a live call (the call ends with reason `transfer`, a `call.transfer` event and a signed
webhook carrying the call so far), and a Twilio call is then dialled to the configured number."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import websockets

from services.gateway.calls import twilio_signature
from tests.gateway.helpers import post_chat, read_sse
from tests.stack import Stack
from tests.webhook_receiver import receiving

ASK_FOR_PERSON = "I want to talk to a person."
TRANSFER_WORDS = ("transfer", "colleague")


def test_asking_for_a_person_transfers_the_turn(client: httpx.Client) -> None:
    links = post_chat(client, ASK_FOR_PERSON, speak=False)
    job = read_sse(client, links["events_url"])[-1]["data"]["job"]
    llm = job["results"]["llm"]
    assert llm["action"] == "transfer", llm
    assert [c["name"] for c in llm["tool_calls"]] == ["transfer_to_human"]
    assert any(w in llm["text"].lower() for w in TRANSFER_WORDS)
    assert "{" not in llm["text"] and "transfer_to_human" not in llm["text"]


async def realtime_call(base_url: str, text: str) -> tuple[list[dict[str, Any]], float]:
    """A text turn on a live call; every event until the server closes the socket, and when it closed."""
    got: list[dict[str, Any]] = []
    url = base_url.replace("http://", "ws://") + "/v1/realtime?model=voicequeue"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        async with asyncio.timeout(120):
            async for raw in ws:
                got.append(json.loads(raw))
    return got, time.monotonic()


def test_a_live_call_is_handed_over_with_its_summary(stack: Stack, client: httpx.Client) -> None:
    with receiving() as receiver:
        r = client.put("/v1/webhooks", json={"url": receiver.url, "events": ["call.transfer", "call.ended"]})
        assert r.status_code == 200, r.text
        secret = r.json()["secret"]
        try:
            got, _ = asyncio.run(realtime_call(stack.base_url, ASK_FOR_PERSON))
            kinds = [e["type"] for e in got]
            done = next(e for e in got if e["type"] == "response.done")
            assert done["response"]["status"] == "completed"
            said = next(e for e in got if e["type"] == "response.output_audio_transcript.done")["transcript"]
            assert any(w in said.lower() for w in TRANSFER_WORDS), said
            assert "response.output_audio.delta" in kinds  # the caller heard it before the hand-over
            transfer = next(e for e in got if e["type"] == "call.transfer")
            assert kinds.index("call.transfer") > kinds.index("response.done")
            assert transfer["target"] == "+15550100"
            assert transfer["summary"]["last_request"] == ASK_FOR_PERSON
            call_id = transfer["call_id"]
            record = client.get(f"/v1/calls/{call_id}").json()
            assert record["end_reason"] == "transfer" and record["transfer"]["target"] == "+15550100"
            assert record["turns"][-1]["tool_calls"][0]["name"] == "transfer_to_human"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len({q.headers.get("x-voicequeue-event") for q in
                                                        receiver.requests}) < 2:
                time.sleep(0.2)
        finally:
            client.delete("/v1/webhooks")
    by_event = {q.headers.get("x-voicequeue-event"): q for q in receiver.requests}
    assert set(by_event) == {"call.transfer", "call.ended"}
    sent = by_event["call.transfer"]
    assert receiver.verified(sent, secret)
    data = json.loads(sent.body)["data"]
    assert data["call_id"] == call_id and data["summary"]["last_request"] == ASK_FOR_PERSON
    assert json.loads(by_event["call.ended"].body)["data"]["reason"] == "transfer"


def test_twilio_asks_where_a_transferred_call_goes(stack: Stack, client: httpx.Client) -> None:
    """The `<Connect action>` request after a stream: a call the bot transferred is dialled, others hang up."""
    import redis

    from shared import keys

    conn = redis.Redis.from_url(stack.redis_url)
    conn.set(keys.twilio_transfer("CA-transferred"), "+15550100", ex=60)
    dial = client.post("/v1/telephony/twilio/after", data={"CallSid": "CA-transferred"})
    assert dial.status_code == 200 and dial.text == "<Response><Dial>+15550100</Dial></Response>"
    again = client.post("/v1/telephony/twilio/after", data={"CallSid": "CA-transferred"})
    assert again.text == "<Response><Hangup/></Response>"  # read once
    assert client.post("/v1/telephony/twilio/after", data={}).status_code == 400
    assert twilio_signature.sign("t", "https://h/x", {"b": "2", "a": "1"}) == twilio_signature.sign(
        "t", "https://h/xa1b2")


def test_a_ticket_request_reaches_the_tenants_webhook_signed(client: httpx.Client) -> None:
    with receiving() as receiver:
        r = client.put("/v1/webhooks", json={"url": receiver.url, "events": ["ticket.created"]})
        assert r.status_code == 200, r.text
        secret = r.json()["secret"]
        try:
            links = post_chat(client, "My blender arrived broken, please open a ticket. My email is anna@example.com",
                              speak=False)
            llm = read_sse(client, links["events_url"])[-1]["data"]["job"]["results"]["llm"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not receiver.requests:
                time.sleep(0.2)
        finally:
            client.delete("/v1/webhooks")
    [made] = llm["tool_calls"]
    assert made["name"] == "create_ticket" and made["status"] == "done", llm
    assert "ticket" in llm["text"].lower()
    [sent] = receiver.requests
    assert receiver.verified(sent, secret)
    ticket = json.loads(sent.body)["data"]
    assert ticket["ticket_id"] == made["result"]["ticket_id"]
    assert ticket["contact"] == "anna@example.com" and "blender" in (ticket["subject"] + ticket["summary"]).lower()
