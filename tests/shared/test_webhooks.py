"""Webhook deliveries against a real Redis and a real local HTTP receiver: signed bodies, retries on
503/429/timeouts with Retry-After honoured, no retry on 400, dead letters and replay, never twice once
delivered, and a delivery job run by a real rq worker through the llm service's task table.

A delivery job makes one attempt; a retry waits in the due set until `release_due` (every worker's reaper)
queues it again. `settle` drives that loop the way the workers do, without a worker."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job as RqJob

from shared import egress, keys, reaper, retention, signing, webhooks
from shared.config import CommonSettings
from tests.fakes.resolver import install
from tests.stack import free_port
from tests.webhook_receiver import Answer, Receiver, receiving

TENANT = "shop-a"


@pytest.fixture
def settings(redis_url: str) -> CommonSettings:
    # Short waits and timeouts: a test's retries take a second or two, not minutes.
    return CommonSettings(redis_url=redis_url, webhook_timeout_s=0.5, webhook_max_attempts=3,
                          webhook_retry_first_wait_s=0.05, webhook_retry_max_wait_s=2.0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def configure(conn: redis.Redis, receiver: Receiver, events: list[str] | None = None) -> webhooks.Endpoint:
    endpoint = webhooks.set_endpoint(conn, TENANT, receiver.url, events)
    receiver.secret = endpoint.secret
    return endpoint


def queued(conn: redis.Redis) -> list[RqJob]:
    return Queue(webhooks.DELIVER_QUEUE, connection=conn).get_jobs()


def record(conn: redis.Redis, delivery_id: str) -> webhooks.Delivery:
    found = webhooks.get_delivery(conn, TENANT, delivery_id)
    assert found is not None
    return found


def due_at(conn: redis.Redis, delivery_id: str) -> float | None:
    return conn.zscore(keys.WEBHOOK_DUE, delivery_id)


def settle(conn: redis.Redis, settings: CommonSettings, delivery_id: str, limit_s: float = 15.0) -> None:
    """Run the delivery job; each time it leaves the delivery due again, wait until then, release it as a
    worker's reaper would and run the one job that queues, until the delivery is delivered or dead."""
    webhooks.send(conn, settings, delivery_id)
    deadline = time.monotonic() + limit_s
    while (due := due_at(conn, delivery_id)) is not None:
        assert time.monotonic() < deadline, "the delivery never settled"
        time.sleep(max(0.0, due - time.time()))
        assert webhooks.release_due(conn, settings) == 1
        job = queued(conn)[-1]
        assert job.args == (delivery_id,) and due_at(conn, delivery_id) is None
        job.delete()
        webhooks.send(conn, settings, delivery_id)


def test_a_delivery_arrives_signed_with_the_tenants_secret(conn: redis.Redis, settings: CommonSettings,
                                                           receiver: Receiver) -> None:
    configure(conn, receiver)
    delivery_id = webhooks.deliver(conn, settings, TENANT, "ticket.created", {"ticket": "T-1", "name": "Zoë"})
    assert delivery_id is not None and delivery_id.startswith("whd_")
    jobs = queued(conn)
    assert [(j.func_name, j.args) for j in jobs] == [(webhooks.DELIVER_TASK, (delivery_id,))]
    assert record(conn, delivery_id).status == "pending"

    webhooks.send(conn, settings, delivery_id)

    (got,) = receiver.requests
    assert receiver.verified(got)
    assert not receiver.verified(got, secret=signing.new_secret())  # another secret does not verify
    assert not signing.verify(receiver.secret or "", got.body + b" ", got.headers[signing.HEADER.lower()])
    body = json.loads(got.body)
    assert body["id"] == delivery_id and body["type"] == "ticket.created"
    assert body["data"] == {"ticket": "T-1", "name": "Zoë"} and abs(body["created_at"] - time.time()) < 10
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-voicequeue-event"] == "ticket.created"
    assert got.headers["x-voicequeue-delivery"] == delivery_id
    done = record(conn, delivery_id)
    assert (done.status, done.attempts, done.response_status, done.last_error) == ("delivered", 1, 200, None)
    assert done.delivered_at is not None and done.public()["payload"] == body


def test_503_twice_then_200_is_delivered_once_after_three_attempts(
        conn: redis.Redis, settings: CommonSettings, receiver: Receiver) -> None:
    configure(conn, receiver)
    receiver.plan(Answer(503), Answer(503), then=Answer(200))
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {"call": "c1"})
    assert delivery_id is not None

    settle(conn, settings, delivery_id)

    assert [r.answered for r in receiver.requests] == [503, 503, 200]
    assert len({r.body for r in receiver.requests}) == 1  # the same bytes each time, signed afresh
    assert all(receiver.verified(r) for r in receiver.requests)
    assert {r.headers["x-voicequeue-delivery"] for r in receiver.requests} == {delivery_id}
    done = record(conn, delivery_id)
    assert (done.status, done.attempts, done.response_status) == ("delivered", 3, 200)
    assert webhooks.dead_letters(conn, TENANT) == []


@pytest.mark.parametrize(("retry_after", "least_s", "most_s"), [
    ("1", 1.0, 1.9),
    ("http-date", 1.0, 2.9),  # a date two seconds ahead: whole seconds, so 1-2 s from now
    ("120", 1.9, 2.9),  # capped by webhook_retry_max_wait_s (2 s)
])
def test_429_retry_after_is_honoured_and_capped(conn: redis.Redis, settings: CommonSettings, receiver: Receiver,
                                                retry_after: str, least_s: float, most_s: float) -> None:
    configure(conn, receiver)
    value = email.utils.formatdate(time.time() + 2, usegmt=True) if retry_after == "http-date" else retry_after
    receiver.plan(Answer(429, {"Retry-After": value}), then=Answer(204))
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.transfer", {"to": "billing"})
    assert delivery_id is not None

    webhooks.send(conn, settings, delivery_id)

    (first,) = receiver.requests
    due = due_at(conn, delivery_id)
    waiting = record(conn, delivery_id)
    assert due is not None and waiting.next_attempt_at == due
    assert least_s - 0.1 <= due - waiting.updated_at <= most_s - 0.1  # set by Retry-After, not the backoff
    assert (waiting.status, waiting.attempts, waiting.response_status) == ("pending", 1, 429)

    settle(conn, settings, delivery_id)

    first, second = receiver.requests
    assert (first.answered, second.answered) == (429, 204)
    assert least_s <= second.at - first.at <= most_s  # the backoff alone would be ~0.05-0.1 s
    assert record(conn, delivery_id).status == "delivered"


def test_a_receiver_that_always_fails_gives_a_dead_letter_that_replays_once_fixed(
        conn: redis.Redis, settings: CommonSettings, receiver: Receiver) -> None:
    configure(conn, receiver)
    receiver.plan(then=Answer(500, body=b"database unavailable"))
    delivery_id = webhooks.deliver(conn, settings, TENANT, "tool.failed", {"tool": "lookup_order"})
    assert delivery_id is not None
    queued(conn)[0].delete()  # this test runs the job itself

    settle(conn, settings, delivery_id)

    assert [r.answered for r in receiver.requests] == [500, 500, 500]
    (dead,) = webhooks.dead_letters(conn, TENANT)
    assert (dead.id, dead.status, dead.attempts, dead.event) == (delivery_id, "dead", 3, "tool.failed")
    assert dead.last_error is not None and "HTTP 500" in dead.last_error
    assert "database unavailable" in dead.last_error and dead.response_status == 500

    receiver.plan(then=Answer(200))
    replayed = webhooks.replay(conn, settings, TENANT, delivery_id)
    assert (replayed.status, replayed.attempts, replayed.last_error, replayed.replays) == ("pending", 0, None, 1)
    assert [j.args for j in queued(conn)] == [(delivery_id,)]
    assert webhooks.dead_letters(conn, TENANT) == []

    webhooks.send(conn, settings, delivery_id)

    assert [r.answered for r in receiver.requests] == [500, 500, 500, 200]
    assert receiver.requests[-1].body == receiver.requests[0].body and receiver.verified(receiver.requests[-1])
    done = record(conn, delivery_id)
    assert (done.status, done.attempts, done.last_error) == ("delivered", 1, None)
    with pytest.raises(ValueError, match="only dead deliveries"):
        webhooks.replay(conn, settings, TENANT, delivery_id)


def test_a_receiver_that_times_out_ends_dead_with_the_timeout(conn: redis.Redis, settings: CommonSettings,
                                                              receiver: Receiver) -> None:
    configure(conn, receiver)
    receiver.plan(then=Answer(200, delay_s=1.5))  # longer than webhook_timeout_s (0.5 s)
    settings.webhook_max_attempts = 2
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {"call": "c2"})
    assert delivery_id is not None

    started = time.monotonic()
    settle(conn, settings, delivery_id)

    assert time.monotonic() - started < 3.0
    assert len(receiver.requests) == 2
    (dead,) = webhooks.dead_letters(conn, TENANT)
    assert dead.attempts == 2 and dead.last_error == "timeout: no answer within 0.5 s"


def test_an_unreachable_receiver_ends_dead_with_the_connection_error(conn: redis.Redis,
                                                                     settings: CommonSettings) -> None:
    webhooks.set_endpoint(conn, TENANT, f"http://127.0.0.1:{free_port()}/nobody-listens")
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {})
    assert delivery_id is not None
    settle(conn, settings, delivery_id)
    dead = record(conn, delivery_id)
    assert dead.status == "dead" and dead.attempts == 3 and dead.response_status is None
    assert dead.last_error is not None and dead.last_error.startswith("connection: ConnectError")


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "https://10.0.0.5/hooks",
                                 "http://192.168.1.1/", "https://[fd00::1]/hooks", "http://2852039166/"])
def test_an_endpoint_at_an_internal_address_is_refused_unless_the_operator_allows_it(conn: redis.Redis,
                                                                                       url: str) -> None:
    # Plain http says nothing about where: a private host needs egress_allow_private as well.
    with pytest.raises(egress.Blocked, match="address: tenants' webhooks and tools may not call internal"):
        webhooks.set_endpoint(conn, TENANT, url, allow_http=True)
    assert webhooks.get_endpoint(conn, TENANT) is None
    assert webhooks.set_endpoint(conn, TENANT, url, allow_http=True, allow_private=True).url == url


def test_an_endpoint_that_is_internal_when_sent_ends_dead_without_a_request(
        conn: redis.Redis, settings: CommonSettings, receiver: Receiver) -> None:
    # 0.0.0.0 reaches this host's loopback on Linux: the receiver, at an address the policy refuses.
    url = receiver.url.replace("127.0.0.1", "0.0.0.0")
    receiver.secret = webhooks.set_endpoint(conn, TENANT, url, allow_http=True,  # allowed back then
                                            allow_private=True).secret
    assert not settings.egress_allow_private
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {"call": "c7"})
    assert delivery_id is not None
    webhooks.send(conn, settings, delivery_id)
    dead = record(conn, delivery_id)
    assert (dead.status, dead.attempts, dead.response_status) == ("dead", 1, None)  # not retried
    assert dead.last_error is not None and dead.last_error.startswith("0.0.0.0 is an unspecified address")
    assert "VQ_EGRESS_ALLOW_PRIVATE=true" in dead.last_error
    assert due_at(conn, delivery_id) is None and [d.id for d in webhooks.dead_letters(conn, TENANT)] == [delivery_id]
    assert receiver.requests == []  # refused before connecting

    settings.egress_allow_private = True  # the operator allows it: the replay goes through
    webhooks.replay(conn, settings, TENANT, delivery_id)
    webhooks.send(conn, settings, delivery_id)
    (got,) = receiver.requests
    assert receiver.verified(got) and record(conn, delivery_id).status == "delivered"


def test_each_attempt_looks_the_name_up_once_and_connects_where_it_pointed(
        conn: redis.Redis, settings: CommonSettings, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    dns = install(monkeypatch, {"receiver.test": ["127.0.0.1"]})  # httpx itself cannot resolve this name
    url = receiver.url.replace("127.0.0.1", "receiver.test")
    receiver.secret = webhooks.set_endpoint(conn, TENANT, url, allow_http=True).secret  # not loopback by name
    receiver.plan(Answer(503), then=Answer(200))
    dns.lookups.clear()
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {"call": "c10"})
    assert delivery_id is not None

    settle(conn, settings, delivery_id)

    assert [r.answered for r in receiver.requests] == [503, 200] and all(map(receiver.verified, receiver.requests))
    port = url.split(":")[2].split("/")[0]
    assert {r.headers["host"] for r in receiver.requests} == {f"receiver.test:{port}"}
    assert dns.lookups == ["receiver.test"] * 2  # one per attempt, none by httpx

    dns.table["receiver.test"] = ["169.254.169.254"]  # it rebinds: the next attempt is refused, unsent
    again = webhooks.deliver(conn, settings, TENANT, "call.ended", {"call": "c11"})
    assert again is not None
    webhooks.send(conn, settings, again)
    dead = record(conn, again)
    assert dead.status == "dead" and dead.last_error is not None
    assert dead.last_error.startswith("'receiver.test' resolves to 169.254.169.254, which is a link-local address")
    assert len(receiver.requests) == 2 and dns.lookups == ["receiver.test"] * 3


def test_a_name_that_does_not_resolve_when_sent_is_retried_as_a_connection_error(
        conn: redis.Redis, settings: CommonSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, {})
    webhooks.set_endpoint(conn, TENANT, "https://gone.test/hooks")  # accepted: it may resolve later
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {})
    assert delivery_id is not None
    webhooks.send(conn, settings, delivery_id)
    waiting = record(conn, delivery_id)
    assert waiting.status == "pending" and due_at(conn, delivery_id) is not None
    assert waiting.last_error == "connection: ConnectError: 'gone.test' does not resolve"


def test_a_400_is_not_retried(conn: redis.Redis, settings: CommonSettings, receiver: Receiver) -> None:
    configure(conn, receiver)
    receiver.plan(then=Answer(400, body=b"unknown field 'ticket'"))
    delivery_id = webhooks.deliver(conn, settings, TENANT, "ticket.created", {"ticket": "T-2"})
    assert delivery_id is not None

    webhooks.send(conn, settings, delivery_id)

    assert len(receiver.requests) == 1 and due_at(conn, delivery_id) is None
    dead = record(conn, delivery_id)
    assert (dead.status, dead.attempts, dead.response_status) == ("dead", 1, 400)
    assert dead.last_error == "HTTP 400 Bad Request: unknown field 'ticket'"
    assert [d.id for d in webhooks.dead_letters(conn, TENANT)] == [delivery_id]


def test_a_delivered_record_is_never_sent_again(conn: redis.Redis, settings: CommonSettings,
                                                receiver: Receiver) -> None:
    configure(conn, receiver)
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {"call": "c3"})
    assert delivery_id is not None
    webhooks.send(conn, settings, delivery_id)
    assert len(receiver.requests) == 1

    webhooks.send(conn, settings, delivery_id)  # the job re-run after a worker died, say

    assert len(receiver.requests) == 1
    assert record(conn, delivery_id).attempts == 1


def test_no_endpoint_or_an_unsubscribed_event_stores_nothing(conn: redis.Redis, settings: CommonSettings,
                                                             receiver: Receiver) -> None:
    assert webhooks.deliver(conn, settings, TENANT, "call.ended", {"call": "c4"}) is None
    configure(conn, receiver, events=["call.ended"])
    assert webhooks.deliver(conn, settings, TENANT, "ticket.created", {"ticket": "T-3"}) is None
    assert webhooks.deliver(conn, settings, "shop-b", "call.ended", {"call": "c5"}) is None
    assert conn.keys(keys.webhook_delivery("*")) == [] and queued(conn) == []
    assert webhooks.deliver(conn, settings, TENANT, "call.ended", {"call": "c6"}) is not None
    with pytest.raises(ValueError, match=r"unknown webhook event 'call\.ending'"):
        webhooks.deliver(conn, settings, TENANT, "call.ending", {})


def test_endpoint_secret_is_kept_until_rotated_and_bad_config_refused(conn: redis.Redis) -> None:
    first = webhooks.set_endpoint(conn, TENANT, "https://example.test/a")
    assert first.secret.startswith("whsec_") and first.events is None
    again = webhooks.set_endpoint(conn, TENANT, "https://example.test/b", ["call.ended"])
    assert (again.secret, again.url, again.events, again.created_at) == (first.secret, "https://example.test/b",
                                                                         ["call.ended"], first.created_at)
    rotated = webhooks.set_endpoint(conn, TENANT, "https://example.test/b", rotate=True)
    assert rotated.secret != first.secret and webhooks.get_endpoint(conn, TENANT) == rotated
    for url in ("ftp://example.test/x", "example.test/x", "http://", "javascript:alert(1)", "http://[::1/x",
                "https://example.test:port/x"):
        with pytest.raises(ValueError, match="must be http:// or https://"):
            webhooks.set_endpoint(conn, TENANT, url)
    with pytest.raises(ValueError, match="at most 2048 characters"):
        webhooks.set_endpoint(conn, TENANT, "https://example.test/" + "a" * 2048)
    with pytest.raises(ValueError, match="unknown event"):
        webhooks.set_endpoint(conn, TENANT, "https://example.test/b", ["call.started"])
    with pytest.raises(ValueError, match="at least one event"):
        webhooks.set_endpoint(conn, TENANT, "https://example.test/b", [])
    assert webhooks.get_endpoint(conn, TENANT) == rotated  # refusals changed nothing
    assert webhooks.delete_endpoint(conn, TENANT) and webhooks.get_endpoint(conn, TENANT) is None
    assert not webhooks.delete_endpoint(conn, TENANT)


def test_plain_http_is_for_loopback_unless_the_operator_allows_it(conn: redis.Redis,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("http://127.0.0.1:8080/h", "http://localhost/h", "http://[::1]:9/h", "http://127.0.0.2/h"):
        assert webhooks.set_endpoint(conn, TENANT, url).url == url
    refusal = ("must use https (plain http is allowed only to 127.0.0.1, localhost or ::1, unless the operator "
               "sets VQ_WEBHOOKS_ALLOW_HTTP=true)")
    for url in ("http://hooks.example.test/h", "http://8.8.8.8/h", "HTTP://hooks.example.test/h"):
        with pytest.raises(ValueError) as caught:
            webhooks.set_endpoint(conn, TENANT, url)
        assert str(caught.value) == refusal
    kept = webhooks.get_endpoint(conn, TENANT)
    assert kept is not None and kept.url == "http://127.0.0.2/h"  # refusals changed nothing
    allowed = webhooks.set_endpoint(conn, TENANT, "http://hooks.example.test/h", allow_http=True)
    assert allowed.url == "http://hooks.example.test/h"
    assert webhooks.set_endpoint(conn, TENANT, "https://hooks.example.test/h").url == "https://hooks.example.test/h"

    monkeypatch.delenv(webhooks.HTTP_SETTING, raising=False)
    assert CommonSettings().webhooks_allow_http is False  # the setting that `allow_http` stands for
    monkeypatch.setenv(webhooks.HTTP_SETTING, "true")
    assert CommonSettings().webhooks_allow_http is True


def test_deliveries_expire_and_endpoints_survive_the_retention_sweep(conn: redis.Redis, settings: CommonSettings,
                                                                     receiver: Receiver) -> None:
    configure(conn, receiver)
    receiver.plan(then=Answer(410))
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {})
    assert delivery_id is not None
    webhooks.send(conn, settings, delivery_id)
    retention.sweep(conn, 60)
    assert conn.ttl(keys.webhook_endpoint(TENANT)) == -1  # configuration: kept until deleted
    for key in (keys.webhook_delivery(delivery_id), keys.webhook_dead(TENANT)):
        assert settings.webhook_retention_s - 10 < conn.ttl(key) <= settings.webhook_retention_s


def test_replay_refuses_unknown_and_other_tenants_deliveries(conn: redis.Redis, settings: CommonSettings,
                                                             receiver: Receiver) -> None:
    configure(conn, receiver)
    receiver.plan(then=Answer(404))
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {})
    assert delivery_id is not None
    webhooks.send(conn, settings, delivery_id)
    for tenant, ident in (("shop-b", delivery_id), (TENANT, "whd_nope"), (TENANT, "../etc")):
        with pytest.raises(KeyError):
            webhooks.replay(conn, settings, tenant, ident)
    assert webhooks.get_delivery(conn, "shop-b", delivery_id) is None
    assert webhooks.dead_letters(conn, "shop-b") == []
    assert record(conn, delivery_id).status == "dead"


def test_an_endpoint_removed_before_sending_ends_dead(conn: redis.Redis, settings: CommonSettings,
                                                      receiver: Receiver) -> None:
    configure(conn, receiver)
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {})
    assert delivery_id is not None
    webhooks.delete_endpoint(conn, TENANT)
    webhooks.send(conn, settings, delivery_id)
    assert receiver.requests == []
    dead = record(conn, delivery_id)
    assert dead.status == "dead" and dead.last_error == "the tenant has no webhook endpoint any more"


def test_the_llm_workers_task_table_runs_a_delivery_job(conn: redis.Redis, settings: CommonSettings,
                                                        receiver: Receiver) -> None:
    """The job as queued, taken by the project's in-process rq worker with the llm service's tasks (no model
    is loaded: delivering needs none); the retry is queued again by a worker's reaper tick."""
    from services.llm.worker import SERVICE
    from shared.worker import InProcessWorker, Running, StageJob

    class Worker(InProcessWorker):
        running = Running(SERVICE, settings, None)

    configure(conn, receiver)
    receiver.plan(Answer(503), then=Answer(200))
    delivery_id = webhooks.deliver(conn, settings, TENANT, "ticket.created", {"ticket": "T-9"})
    assert delivery_id is not None
    reaping = reaper.Reaper(settings.model_copy(update={"retention_sweep_interval_s": 0}), [])

    Worker([webhooks.DELIVER_QUEUE], connection=conn, job_class=StageJob).work(burst=True)

    assert [r.answered for r in receiver.requests] == [503] and queued(conn) == []
    due = due_at(conn, delivery_id)
    assert due is not None and record(conn, delivery_id).status == "pending"
    time.sleep(max(0.0, due - time.time()))
    reaping.tick(conn)
    assert [j.args for j in queued(conn)] == [(delivery_id,)]

    Worker([webhooks.DELIVER_QUEUE], connection=conn, job_class=StageJob).work(burst=True)

    assert [r.answered for r in receiver.requests] == [503, 200]
    assert all(receiver.verified(r) for r in receiver.requests)
    assert (record(conn, delivery_id).status, record(conn, delivery_id).attempts) == ("delivered", 2)
    assert queued(conn) == [] and due_at(conn, delivery_id) is None
    with pytest.raises(RuntimeError, match="only in `voicequeue worker llm`"):
        webhooks.perform_delivery(delivery_id)


def test_a_failed_attempt_leaves_the_delivery_due_and_returns_at_once(
        conn: redis.Redis, settings: CommonSettings, receiver: Receiver) -> None:
    configure(conn, receiver)
    receiver.plan(then=Answer(200, delay_s=1.5))  # never within webhook_timeout_s (0.5 s)
    settings.webhook_retry_first_wait_s, settings.webhook_retry_max_wait_s = 5.0, 60.0
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {"call": "c8"})
    assert delivery_id is not None

    started, now = time.monotonic(), time.time()
    webhooks.send(conn, settings, delivery_id)

    assert time.monotonic() - started < 2 * settings.webhook_timeout_s  # one attempt, no waiting
    waiting = record(conn, delivery_id)
    assert (waiting.status, waiting.attempts, waiting.response_status) == ("pending", 1, None)
    assert waiting.last_error == "timeout: no answer within 0.5 s"
    due = due_at(conn, delivery_id)
    assert due is not None and waiting.next_attempt_at == due
    assert now + 5.0 <= due <= time.time() + 10.0  # the first wait, 5 s, plus up to 5 s of jitter
    assert 0 < conn.ttl(keys.WEBHOOK_DUE) <= settings.webhook_retention_s

    # The job run again meanwhile (its worker died after scheduling, say) leaves the waiting delivery alone.
    webhooks.send(conn, settings, delivery_id)
    assert len(receiver.requests) == 1 and record(conn, delivery_id).attempts == 1
    assert webhooks.release_due(conn, settings) == 0 and len(queued(conn)) == 1  # the job `deliver` queued


def test_release_due_queues_only_the_due_deliveries_once(conn: redis.Redis, settings: CommonSettings,
                                                         receiver: Receiver) -> None:
    configure(conn, receiver)
    receiver.plan(Answer(503, {"Retry-After": "1"}), then=Answer(503, {"Retry-After": "60"}))
    soon, later = (webhooks.deliver(conn, settings, TENANT, "call.ended", {"n": n}) for n in range(2))
    assert soon is not None and later is not None
    for delivery_id in (soon, later):
        webhooks.send(conn, settings, delivery_id)
    Queue(webhooks.DELIVER_QUEUE, connection=conn).empty()  # the first attempts' jobs, run above
    now = time.time()

    assert webhooks.release_due(conn, settings) == 0 and queued(conn) == []  # nothing is due yet
    assert webhooks.release_due(conn, settings, now=now + 1.5) == 1  # later is due in 2 s (capped)
    assert [j.args for j in queued(conn)] == [(soon,)] and due_at(conn, soon) is None
    assert webhooks.release_due(conn, settings, now=now + 1.5) == 0 and len(queued(conn)) == 1
    assert webhooks.release_due(conn, settings, now=now + 3) == 1
    assert [j.args for j in queued(conn)] == [(soon,), (later,)] and conn.zcard(keys.WEBHOOK_DUE) == 0


def test_workers_releasing_at_once_queue_each_delivery_once(conn: redis.Redis, redis_url: str,
                                                             settings: CommonSettings, receiver: Receiver) -> None:
    configure(conn, receiver)
    receiver.plan(then=Answer(503))
    ids = [webhooks.deliver(conn, settings, TENANT, "call.ended", {"n": n}) for n in range(20)]
    for delivery_id in ids:
        assert delivery_id is not None
        webhooks.send(conn, settings, delivery_id)
    Queue(webhooks.DELIVER_QUEUE, connection=conn).empty()
    assert conn.zcard(keys.WEBHOOK_DUE) == 20
    start = threading.Barrier(4)
    released: list[int] = []

    def worker() -> None:
        own = redis.Redis.from_url(redis_url)
        start.wait()
        released.append(webhooks.release_due(own, settings, now=time.time() + 10))
        own.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(released) == 20
    assert sorted(j.args[0] for j in queued(conn)) == sorted(map(str, ids))
    assert conn.zcard(keys.WEBHOOK_DUE) == 0


def live_turn(conn: redis.Redis, settings: CommonSettings, resources: Any) -> None:
    """Stands in for a live reply in the test below (a task of the llm worker that needs no model)."""
    LIVE_TURNS.append(time.monotonic())


LIVE_TURNS: list[float] = []


def test_a_live_turn_waits_for_one_attempt_of_a_dead_receiver_at_most(
        conn: redis.Redis, settings: CommonSettings, receiver: Receiver) -> None:
    """A receiver that never answers in time costs the llm worker one attempt, not the retry schedule (with
    the waits below, the whole schedule would hold the worker for about 15 s)."""
    from dataclasses import replace

    from services.llm.worker import SERVICE
    from shared import queues
    from shared.worker import InProcessWorker, Running, StageJob

    settings.webhook_max_attempts, settings.webhook_retry_first_wait_s = 5, 1.0
    service = replace(SERVICE, tasks={**SERVICE.tasks, "tests.shared.test_webhooks.live_turn": live_turn})

    class Worker(InProcessWorker):
        running = Running(service, settings, None)

    configure(conn, receiver)
    receiver.plan(then=Answer(200, delay_s=3.0))
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {"call": "c9"})
    assert delivery_id is not None
    live = Queue(queues.name("llm", "live"), connection=conn)
    LIVE_TURNS.clear()
    asked: list[float] = []

    def caller() -> None:  # a live turn arrives while the worker is sending the delivery
        deadline = time.monotonic() + 5
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        asked.append(time.monotonic())
        live.enqueue("tests.shared.test_webhooks.live_turn", job_timeout=30)

    thread = threading.Thread(target=caller)
    thread.start()
    Worker([live.name, webhooks.DELIVER_QUEUE], connection=conn, job_class=StageJob).work(burst=True)
    thread.join()

    assert len(receiver.requests) == 1 and len(asked) == 1 and len(LIVE_TURNS) == 1
    assert LIVE_TURNS[0] - asked[0] < 2 * settings.webhook_timeout_s
    waiting = record(conn, delivery_id)
    assert (waiting.status, waiting.attempts) == ("pending", 1) and due_at(conn, delivery_id) is not None


def test_the_verification_example_in_the_docs_verifies_a_real_delivery(
        conn: redis.Redis, settings: CommonSettings, receiver: Receiver) -> None:
    from tests.conftest import REPO

    doc = (REPO / "docs" / "webhooks.md").read_text()
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(example, namespace)  # the receiver's code exactly as tenants will copy it
    verify = namespace["verify"]
    endpoint = configure(conn, receiver)
    delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {"call": "c7"})
    assert delivery_id is not None
    webhooks.send(conn, settings, delivery_id)
    (got,) = receiver.requests
    header = got.headers["x-voicequeue-signature"]
    assert verify(endpoint.secret, got.body, header)
    assert not verify(signing.new_secret(), got.body, header)
    assert not verify(endpoint.secret, got.body.replace(b"c7", b"c8"), header)
    assert not verify(endpoint.secret, got.body, header, tolerance_s=-1)


def test_dead_letters_are_newest_first_and_limited(conn: redis.Redis, settings: CommonSettings,
                                                   receiver: Receiver) -> None:
    configure(conn, receiver)
    receiver.plan(then=Answer(403))
    ids = []
    for n in range(3):
        delivery_id = webhooks.deliver(conn, settings, TENANT, "call.ended", {"n": n})
        assert delivery_id is not None
        webhooks.send(conn, settings, delivery_id)
        ids.append(delivery_id)
    assert [d.id for d in webhooks.dead_letters(conn, TENANT)] == ids[::-1]
    assert [d.id for d in webhooks.dead_letters(conn, TENANT, limit=2)] == [ids[2], ids[1]]
    assert [d.public()["payload"]["data"] for d in webhooks.dead_letters(conn, TENANT)] == [{"n": 2}, {"n": 1},
                                                                                           {"n": 0}]
