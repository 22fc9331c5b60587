"""GET/DELETE /v1/jobs/{id}, its SSE events (with Last-Event-ID replay) and its audio."""

from __future__ import annotations

import httpx
import redis

from shared import events
from tests.gateway.helpers import post_turn, read_sse


def _stage_events(evs: list[dict]) -> list[str]:
    return [f"{e['event']}:{e['data'].get('stage', '')}" for e in evs if e["event"].startswith(("stage.", "job."))]


def test_events_hold_stages_in_order_and_replay(client: httpx.Client, speech) -> None:
    r = post_turn(client, str(speech / "en_short/librispeech-61-70968-0000.flac"))
    links = r.json()
    evs = read_sse(client, links["events_url"])
    assert _stage_events(evs) == [
        "job.created:", "stage.started:asr", "stage.done:asr", "stage.started:llm", "stage.done:llm",
        "stage.started:tts", "stage.done:tts", "job.done:",
    ]
    deltas = [e["data"]["text"] for e in evs if e["event"] == "llm.delta"]
    llm_done = next(e for e in evs if e["event"] == "stage.done" and e["data"]["stage"] == "llm")
    assert "".join(deltas) == llm_done["data"]["result"]["text"]
    # Results travel with their notification: the final event carries the whole record.
    final = evs[-1]["data"]["job"]
    assert final["results"]["tts"]["blob_id"]
    assert "wizard" in final["results"]["asr"]["text"].lower()

    # Reconnecting with Last-Event-ID replays exactly what came after it.
    cut = 3
    replay = read_sse(client, links["events_url"], headers={"Last-Event-ID": evs[cut]["id"]})
    assert [e["id"] for e in replay] == [e["id"] for e in evs[cut + 1:]]


def test_get_and_delete(client: httpx.Client, speech, stack_redis: redis.Redis) -> None:
    r = post_turn(client, str(speech / "en_short/sr_english.wav"))
    links = r.json()
    assert client.get(links["audio_url"], params={"wait": 300}).status_code == 200
    job = client.get(links["status_url"]).json()
    conn = stack_redis
    blob_keys = [f"vq:blob:{job['inputs']['blob_id']}", f"vq:blob:{job['results']['tts']['blob_id']}"]
    assert conn.exists(*blob_keys) == 2

    assert client.delete(links["status_url"]).status_code == 204
    assert client.get(links["status_url"]).status_code == 404
    assert client.get(links["audio_url"]).status_code == 404
    assert conn.exists(*blob_keys) == 0
    assert conn.exists(f"vq:job:{job['id']}") == 0
    assert conn.ttl(events.stream_key(job["id"])) <= 60
    assert client.delete(links["status_url"]).status_code == 404


def test_unknown_job_is_404_everywhere(client: httpx.Client) -> None:
    for method, path in [("GET", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/events"),
                         ("GET", "/v1/jobs/nope/audio"), ("DELETE", "/v1/jobs/nope")]:
        r = client.request(method, path)
        assert r.status_code == 404, (method, path)
        assert "nope" in r.json()["error"]["message"]


def test_audio_wait_outlasts_redis_socket_timeout(client: httpx.Client, stack_redis: redis.Redis) -> None:
    """A job nobody works on: waiting 6 s (longer than redis-py's 5 s socket timeout) ends in a clean 409."""
    from shared import jobs

    conn = stack_redis
    job_id = jobs.create(conn, kind="speech", priority="live", inputs={"text": "hi"}, options={}, ttl_s=60)
    r = client.get(f"/v1/jobs/{job_id}/audio", params={"wait": 6})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_ready"
