"""/v1/webhooks through a real gateway on a real Redis: the endpoint and its secret, bad input refused with
a reason, deliveries and dead letters seen only by their own tenant, and replay; deliveries are sent by the
project's rq worker with the llm task table to a real local receiver. Also `voicequeue webhooks`."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from services.gateway import keystore
from shared import keys, signing, webhooks
from shared.config import CommonSettings
from tests.conftest import running_redis
from tests.stack import VENV_BIN, lone_gateway
from tests.webhook_receiver import Answer, Receiver, receiving


@dataclass
class Gateway:
    url: str
    conn: redis.Redis
    redis_url: str
    keys: dict[str, str]

    def client(self, tenant: str = "a") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.keys[tenant]}"}, timeout=30)


def serving(tmp_path_factory: pytest.TempPathFactory, url: str, extra_env: dict[str, str] | None = None
            ) -> contextlib.AbstractContextManager[int]:
    """A gateway process on the Redis at `url`; yields its port."""
    return lone_gateway(tmp_path_factory.mktemp("webhooks-api"), url, extra_env)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway alone on its own Redis (auth on, four tenants)."""
    with running_redis(tmp_path_factory.mktemp("webhooks-api-redis")) as url:
        conn = redis.Redis.from_url(url)
        keys_ = {name: keystore.create(conn, f"shop-{name}")[0] for name in ("a", "b", "c", "d")}
        try:
            with serving(tmp_path_factory, url) as port:
                yield Gateway(f"http://127.0.0.1:{port}", conn, url, keys_)
        finally:
            conn.close()


@pytest.fixture(scope="module")
def open_gateway(tmp_path_factory: pytest.TempPathFactory, gateway: Gateway) -> Iterator[Gateway]:
    """A second gateway on the same Redis, run by an operator who set VQ_EGRESS_ALLOW_PRIVATE=true and
    VQ_WEBHOOKS_ALLOW_HTTP=true."""
    allow = {"VQ_EGRESS_ALLOW_PRIVATE": "true", "VQ_WEBHOOKS_ALLOW_HTTP": "true"}
    with serving(tmp_path_factory, gateway.redis_url, allow) as port:
        yield Gateway(f"http://127.0.0.1:{port}", gateway.conn, gateway.redis_url, gateway.keys)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def settings_for(gateway: Gateway) -> CommonSettings:
    return CommonSettings(redis_url=gateway.redis_url, webhook_timeout_s=1.0, webhook_max_attempts=2,
                          webhook_retry_first_wait_s=0.05, webhook_retry_max_wait_s=1.0)


def work_deliveries(gateway: Gateway) -> None:
    """What `voicequeue worker llm` and the workers' reapers do with the delivery jobs (no model needed for
    them): run the queued jobs, and queue each retry again once it is due, until none is waiting."""
    from services.llm.worker import SERVICE
    from shared.worker import InProcessWorker, Running, StageJob

    settings = settings_for(gateway)

    class Worker(InProcessWorker):
        running = Running(SERVICE, settings, None)

    deadline = time.monotonic() + 30
    while True:
        Worker([webhooks.DELIVER_QUEUE], connection=gateway.conn, job_class=StageJob).work(burst=True)
        waiting = gateway.conn.zrange(keys.WEBHOOK_DUE, 0, 0, withscores=True)
        if not waiting:
            return
        assert time.monotonic() < deadline, "a delivery never settled"
        time.sleep(max(0.0, float(waiting[0][1]) - time.time()))
        webhooks.release_due(gateway.conn, settings)


def test_endpoint_set_show_rotate_delete(gateway: Gateway) -> None:
    with gateway.client("a") as a:
        r = a.put("/v1/webhooks", json={"url": "https://hooks.example.test/vq", "events": ["call.ended"]})
        assert r.status_code == 200, r.text
        made = r.json()
        assert made["url"] == "https://hooks.example.test/vq" and made["events"] == ["call.ended"]
        assert made["secret"].startswith("whsec_") and len(made["secret"]) > 40
        shown = a.get("/v1/webhooks").json()
        assert shown["url"] == made["url"] and shown["secret"] != made["secret"]
        assert shown["secret"].endswith(made["secret"][-4:]) and made["secret"][6:-4] not in shown["secret"]
        again = a.put("/v1/webhooks", json={"url": "https://hooks.example.test/v2"}).json()
        assert again["secret"] == made["secret"] and again["events"] is None  # kept: receivers keep verifying
        rotated = a.put("/v1/webhooks", json={"url": "https://hooks.example.test/v2", "rotate_secret": True}).json()
        assert rotated["secret"] != made["secret"]
        assert webhooks.get_endpoint(gateway.conn, "shop-a") == webhooks.Endpoint(**rotated)
        assert a.delete("/v1/webhooks").status_code == 204
        gone = a.get("/v1/webhooks")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "webhook_not_configured"
        assert a.delete("/v1/webhooks").status_code == 404
    assert httpx.get(f"{gateway.url}/v1/webhooks").status_code == 401


BAD: dict[str, tuple[dict[str, Any], int, str, str]] = {
    "malformed json": ({"content": b'{"url": "https://x.test/', "headers": {"content-type": "application/json"}},
                       400, "malformed_json", "not valid JSON"),
    "ftp url": ({"json": {"url": "ftp://x.test/hook"}}, 400, "invalid_webhook_url", "http:// or https://"),
    "no host": ({"json": {"url": "https:///hook"}}, 400, "invalid_webhook_url", "with a host"),
    "unknown event": ({"json": {"url": "https://x.test/h", "events": ["call.started"]}}, 400,
                      "invalid_webhook_events", "'call.started'"),
    "no events": ({"json": {"url": "https://x.test/h", "events": []}}, 400, "invalid_webhook_events",
                  "at least one event"),
    "missing url": ({"json": {"events": None}}, 422, "invalid_request", "missing field 'url'"),
    "metadata url": ({"json": {"url": "https://169.254.169.254/latest/meta-data/"}}, 400, "invalid_webhook_url",
                     "169.254.169.254 is a link-local address: tenants' webhooks and tools may not call internal "
                     "addresses unless the operator sets VQ_EGRESS_ALLOW_PRIVATE=true"),
    "private url": ({"json": {"url": "https://192.168.1.1/"}}, 400, "invalid_webhook_url",
                    "192.168.1.1 is a private address"),
    "mapped metadata url": ({"json": {"url": "https://[::ffff:169.254.169.254]/"}}, 400, "invalid_webhook_url",
                            "::ffff:169.254.169.254 is a link-local address"),
    "plain http to a public host": ({"json": {"url": "http://hooks.example.test/vq"}}, 400, "invalid_webhook_url",
                                    "must use https (plain http is allowed only to 127.0.0.1, localhost or ::1, "
                                    "unless the operator sets VQ_WEBHOOKS_ALLOW_HTTP=true)"),
    "events not a list": ({"json": {"url": "https://x.test/h", "events": "call.ended"}}, 422, "invalid_request",
                          "events"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_endpoints_are_refused(gateway: Gateway, case: str) -> None:
    request, status, code, says = BAD[case]
    with gateway.client("c") as c:
        r = c.put("/v1/webhooks", **request)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code and says in r.json()["error"]["message"]
        assert c.get("/v1/webhooks").status_code == 404  # nothing stored


def test_an_internal_endpoint_is_accepted_when_allowed_and_refused_again_when_sent(
        gateway: Gateway, open_gateway: Gateway, receiver: Receiver) -> None:
    # 0.0.0.0 reaches this host's loopback on Linux: the receiver, at an address the policy refuses.
    url = receiver.url.replace("127.0.0.1", "0.0.0.0")
    with gateway.client("d") as closed, open_gateway.client("d") as opened:
        for refused, says in ((url.replace("http:", "https:"), "0.0.0.0 is an unspecified address"),
                              (url, "VQ_WEBHOOKS_ALLOW_HTTP=true")):  # not loopback: plain http refused too
            r = closed.put("/v1/webhooks", json={"url": refused})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_webhook_url"
            assert says in r.json()["error"]["message"]
        assert closed.get("/v1/webhooks").status_code == 404
        r = opened.put("/v1/webhooks", json={"url": url})
        assert r.status_code == 200 and r.json()["url"] == url, r.text
        assert closed.get("/v1/webhooks").json()["url"] == url
    # The workers' settings (settings_for) leave egress_allow_private off: the delivery is refused unsent.
    delivery_id = webhooks.deliver(gateway.conn, settings_for(gateway), "shop-d", "call.ended", {"call": "c9"})
    assert delivery_id is not None
    work_deliveries(gateway)
    with gateway.client("d") as closed:
        dead = closed.get(f"/v1/webhooks/deliveries/{delivery_id}").json()
        assert (dead["status"], dead["attempts"], dead["response_status"]) == ("dead", 1, None)
        assert dead["last_error"].startswith("0.0.0.0 is an unspecified address")
        assert "VQ_EGRESS_ALLOW_PRIVATE=true" in dead["last_error"]
        assert [d["id"] for d in closed.get("/v1/webhooks/dead").json()["dead"]] == [delivery_id]
    assert receiver.requests == []


def test_plain_http_to_a_public_host_is_set_only_where_the_operator_allows_it(gateway: Gateway,
                                                                              open_gateway: Gateway) -> None:
    url = "http://hooks.example.test/vq"
    with gateway.client("c") as closed, open_gateway.client("c") as opened:
        r = closed.put("/v1/webhooks", json={"url": url})
        assert r.status_code == 400 and "VQ_WEBHOOKS_ALLOW_HTTP=true" in r.json()["error"]["message"]
        r = opened.put("/v1/webhooks", json={"url": url})
        assert r.status_code == 200 and r.json()["url"] == url, r.text
        assert closed.delete("/v1/webhooks").status_code == 204


def test_dead_letters_are_the_tenants_own_and_replay_once_fixed(gateway: Gateway, receiver: Receiver) -> None:
    with gateway.client("a") as a, gateway.client("b") as b:
        secret = a.put("/v1/webhooks", json={"url": receiver.url}).json()["secret"]
        receiver.plan(then=Answer(500, body=b"maintenance"))
        delivery_id = webhooks.deliver(gateway.conn, settings_for(gateway), "shop-a", "ticket.created",
                                       {"ticket": "T-7"})
        assert delivery_id is not None

        work_deliveries(gateway)

        assert len(receiver.requests) == 2 and all(receiver.verified(r, secret) for r in receiver.requests)
        record = a.get(f"/v1/webhooks/deliveries/{delivery_id}").json()
        assert (record["status"], record["attempts"], record["response_status"]) == ("dead", 2, 500)
        assert "HTTP 500" in record["last_error"] and "maintenance" in record["last_error"]
        assert record["payload"] == {"id": delivery_id, "type": "ticket.created",
                                     "created_at": record["created_at"], "data": {"ticket": "T-7"}}
        assert [d["id"] for d in a.get("/v1/webhooks/dead").json()["dead"]] == [delivery_id]

        # Tenant b sees none of it, exactly as if the id did not exist.
        for path in (f"/v1/webhooks/deliveries/{delivery_id}", "/v1/webhooks/deliveries/whd_unknown"):
            r = b.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "delivery_not_found"
        assert b.get("/v1/webhooks/dead").json() == {"dead": []}
        assert b.post(f"/v1/webhooks/dead/{delivery_id}/replay").status_code == 404
        assert a.post("/v1/webhooks/dead/whd_unknown/replay").status_code == 404
        assert a.get(f"/v1/webhooks/deliveries/{delivery_id}").json()["status"] == "dead"  # b changed nothing

        receiver.plan(then=Answer(200))
        r = a.post(f"/v1/webhooks/dead/{delivery_id}/replay")
        assert r.status_code == 202 and (r.json()["status"], r.json()["attempts"]) == ("pending", 0)
        again = a.post(f"/v1/webhooks/dead/{delivery_id}/replay")
        assert again.status_code == 409 and again.json()["error"]["code"] == "delivery_not_dead"

        work_deliveries(gateway)

        assert [x.answered for x in receiver.requests] == [500, 500, 200]
        assert receiver.requests[-1].headers["x-voicequeue-delivery"] == delivery_id
        done = a.get(f"/v1/webhooks/deliveries/{delivery_id}").json()
        assert (done["status"], done["attempts"], done["last_error"]) == ("delivered", 1, None)
        assert a.get("/v1/webhooks/dead").json() == {"dead": []}
        assert a.get("/v1/webhooks/dead", params={"limit": 0}).status_code == 422


def voicequeue(gateway: Gateway, tenant: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "voicequeue"), "webhooks", *args, "--url", gateway.url, "--api-key",
                           gateway.keys[tenant]], capture_output=True, text=True, timeout=60)


def test_cli_sets_shows_lists_dead_letters_and_replays(gateway: Gateway, receiver: Receiver) -> None:
    made = voicequeue(gateway, "b", "set", receiver.url, "--events", "call.ended,tool.failed")
    assert made.returncode == 0, made.stderr
    secret = next(line.split()[1] for line in made.stdout.splitlines() if line.startswith("secret:"))
    assert "events: call.ended, tool.failed" in made.stdout
    endpoint = webhooks.get_endpoint(gateway.conn, "shop-b")
    assert endpoint is not None and endpoint.secret == secret
    shown = voicequeue(gateway, "b", "show")
    assert shown.returncode == 0 and receiver.url in shown.stdout and secret not in shown.stdout

    receiver.plan(then=Answer(422, body=b"bad payload"))
    delivery_id = webhooks.deliver(gateway.conn, settings_for(gateway), "shop-b", "tool.failed", {"tool": "x"})
    assert delivery_id is not None
    work_deliveries(gateway)
    assert signing.verify(secret, receiver.requests[0].body, receiver.requests[0].headers["x-voicequeue-signature"])

    dead = voicequeue(gateway, "b", "dead")
    assert dead.returncode == 0, dead.stderr
    assert delivery_id in dead.stdout and "tool.failed" in dead.stdout and "HTTP 422" in dead.stdout
    assert "1 dead letter(s)" in dead.stderr
    replayed = voicequeue(gateway, "b", "replay", delivery_id, "whd_missing")
    assert replayed.returncode == 1 and f"{delivery_id}\tpending" in replayed.stdout
    assert "no webhook delivery with id 'whd_missing'" in replayed.stderr

    refused = voicequeue(gateway, "b", "set", "ftp://x.test/h")
    assert refused.returncode == 1 and "http:// or https://" in refused.stderr
    rotated = voicequeue(gateway, "b", "set", receiver.url, "--rotate-secret")
    assert rotated.returncode == 0 and secret not in rotated.stdout and "events: all" in rotated.stdout
