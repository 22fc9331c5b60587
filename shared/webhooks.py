"""Tenant webhooks: each tenant's endpoint, and the signed, retried deliveries of events to it.

`deliver` stores the event's body and enqueues a job on the llm workers' batch queue, so the caller (the
gateway, a worker in the middle of a call) never waits for the tenant's server. The job (`send`) makes one
attempt: it POSTs the stored bytes, signed afresh (`shared.signing`). After a timeout, connection error,
408, 429 or 5xx with attempts left it notes the error, puts the delivery in the due set
(`keys.WEBHOOK_DUE`) at the time of its next attempt (exponential backoff with jitter, or the receiver's
Retry-After) and returns: a slow or dead receiver holds an llm worker for one attempt, never for the whole
schedule. Every worker's reaper calls `release_due`, which puts due deliveries back on the queue (workers
run no rq scheduler). A delivery that succeeds is `delivered`; one that runs out of attempts, or is refused
with another 4xx, is `dead` and joins the tenant's dead-letter list until it is replayed. Delivery is at
least once: a worker dying between the receiver's 2xx and the record being marked re-sends the same
`X-Voicequeue-Delivery` id, which receivers dedupe on. An endpoint whose host is, or has come to resolve
to, an internal address (`shared.egress`) is refused when set, and each attempt to it is refused (dead,
not retried) before connecting.

Endpoints are kept until deleted (`keys.PERMANENT`); deliveries and dead letters for `webhook_retention_s`.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import redis
from pydantic import BaseModel
from rq import Queue

from shared import egress, keys, metrics, queues, signing
from shared.config import CommonSettings
from shared.redisio import text, transaction
from shared.retry import Retryable, classify_http_status

log = logging.getLogger(__name__)

DELIVER_TASK = "shared.webhooks.perform_delivery"
DELIVER_QUEUE = queues.name("llm", "batch")  # a delivery never delays a live turn
EVENTS = ("ticket.created", "call.transfer", "call.ended", "tool.failed")
EVENT_HEADER = "X-Voicequeue-Event"
DELIVERY_HEADER = "X-Voicequeue-Delivery"
DEAD_LETTERS_MAX = 1000  # per tenant; older ones drop off the list (and expire anyway)
URL_MAX_CHARS = 2048
ERROR_BODY_CHARS = 200  # of a refusing receiver's answer, kept in last_error
RELEASE_MAX = 500  # due deliveries one `release_due` call re-queues; the next reaper tick takes the rest
HTTP_SETTING = "VQ_WEBHOOKS_ALLOW_HTTP"


class Status(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Endpoint(BaseModel):
    """Where a tenant's events go, and the secret they are signed with."""

    url: str
    secret: str
    events: list[str] | None = None  # None: every event
    created_at: float
    updated_at: float = 0.0

    def wants(self, event: str) -> bool:
        return self.events is None or event in self.events


class Delivery(BaseModel):
    """One event on its way to a tenant; `body` holds exactly the bytes that are signed and sent."""

    id: str
    tenant: str
    event: str
    body: str
    status: Status = Status.PENDING
    attempts: int = 0
    created_at: float
    updated_at: float
    delivered_at: float | None = None
    response_status: int | None = None  # the receiver's last HTTP status, if it answered
    last_error: str | None = None
    next_attempt_at: float | None = None  # unix time a pending delivery is due again after a failed attempt
    replays: int = 0

    def public(self) -> dict[str, Any]:
        """The record as the API shows it: the body as JSON (`payload`) rather than its text."""
        out = self.model_dump(mode="json", exclude={"body"})
        out["payload"] = json.loads(self.body)
        return out


class Refused(Exception):
    """The receiver answered with a status that another attempt would not change (4xx other than 408/429)."""


# ---- endpoints ----------------------------------------------------------------------------------------


def check_url(url: str, *, allow_http: bool = False, allow_private: bool = False) -> str:
    """The URL, stripped; ValueError saying why it is refused (`egress.Blocked` for an internal address).
    Plain http is for a loopback host unless `allow_http` (the `webhooks_allow_http` setting): a delivery
    carries call summaries and its signature, which must not be readable on the way."""
    refusal = f"a webhook URL must be http:// or https:// with a host, not {url[:100]!r}"
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # a port that is not a number raises here, not at the first delivery
    except ValueError as exc:
        raise ValueError(f"{refusal} ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(refusal)
    if len(url) > URL_MAX_CHARS:
        raise ValueError(f"a webhook URL has at most {URL_MAX_CHARS} characters")
    egress.check_scheme(parts.scheme, parts.hostname, allow_http=allow_http, setting=HTTP_SETTING)
    egress.check_host(egress.request_host(url.strip()), allow_private=allow_private)
    return url.strip()


def check_events(events: list[str] | None) -> list[str] | None:
    if events is None:
        return None
    if not events:
        raise ValueError(f"give at least one event, or null for all of them: {', '.join(EVENTS)}")
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise ValueError(f"unknown event(s) {', '.join(map(repr, unknown))}; the events are {', '.join(EVENTS)}")
    return list(dict.fromkeys(events))


def set_endpoint(conn: redis.Redis, tenant: str, url: str, events: list[str] | None = None, *,
                 rotate: bool = False, allow_http: bool = False, allow_private: bool = False) -> Endpoint:
    """Create or change the tenant's endpoint. Its secret is made on first set and kept after, so receivers
    keep verifying, unless `rotate` asks for a new one. ValueError for a bad URL or event name;
    `allow_http` is the `webhooks_allow_http` setting, `allow_private` the `egress_allow_private` one."""
    url, events = check_url(url, allow_http=allow_http, allow_private=allow_private), check_events(events)
    key = keys.webhook_endpoint(tenant)
    now = time.time()

    def write(pipe: redis.client.Pipeline) -> Endpoint:
        old = _endpoint(pipe, tenant)
        secret = old.secret if old is not None and not rotate else signing.new_secret()
        endpoint = Endpoint(url=url, secret=secret, events=events, created_at=old.created_at if old else now,
                            updated_at=now)
        pipe.multi()
        pipe.set(key, endpoint.model_dump_json())
        return endpoint

    return transaction(conn, write, key)


def _endpoint(conn: redis.Redis | redis.client.Pipeline, tenant: str) -> Endpoint | None:
    raw = conn.get(keys.webhook_endpoint(tenant))
    return Endpoint.model_validate_json(raw) if raw is not None else None


def get_endpoint(conn: redis.Redis, tenant: str) -> Endpoint | None:
    return _endpoint(conn, tenant)


def delete_endpoint(conn: redis.Redis, tenant: str) -> bool:
    """Remove the tenant's endpoint; deliveries still queued then end as dead letters. False: there was none."""
    return bool(conn.delete(keys.webhook_endpoint(tenant)))


# ---- deliveries ---------------------------------------------------------------------------------------


def deliver(conn: redis.Redis, settings: CommonSettings, tenant: str, event: str,
            data: dict[str, Any]) -> str | None:
    """Queue `event` for the tenant's endpoint; returns the delivery id, or None when the tenant has no
    endpoint or it does not take this event (then nothing is stored). Two Redis round trips, no HTTP."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; add it to shared.webhooks.EVENTS and docs/webhooks.md")
    endpoint = _endpoint(conn, tenant)
    if endpoint is None or not endpoint.wants(event):
        return None
    now = time.time()
    delivery_id = "whd_" + secrets.token_hex(12)
    body = json.dumps({"id": delivery_id, "type": event, "created_at": now, "data": data}, ensure_ascii=False,
                      separators=(",", ":"))
    record = Delivery(id=delivery_id, tenant=tenant, event=event, body=body, created_at=now, updated_at=now)
    pipe = conn.pipeline()
    pipe.multi()  # rq's enqueue expects an open MULTI on a pipeline it is given
    pipe.set(keys.webhook_delivery(delivery_id), record.model_dump_json(), ex=settings.webhook_retention_s)
    _enqueue(conn, pipe, settings, record)
    pipe.execute()
    return delivery_id


def _enqueue(conn: redis.Redis, pipe: redis.client.Pipeline, settings: CommonSettings, record: Delivery) -> None:
    # A job makes one attempt; httpx's timeout bounds connecting, sending and awaiting the answer each.
    budget = 3 * settings.webhook_timeout_s
    Queue(DELIVER_QUEUE, connection=conn).enqueue(
        DELIVER_TASK, record.id, job_timeout=int(budget) + 30, result_ttl=0, failure_ttl=settings.job_ttl_s,
        ttl=settings.webhook_retention_s, description=f"webhook {record.event} {record.tenant}/{record.id}",
        pipeline=pipe)


def _load(conn: redis.Redis | redis.client.Pipeline, delivery_id: str) -> Delivery | None:
    raw = conn.get(keys.webhook_delivery(delivery_id))
    return Delivery.model_validate_json(raw) if raw is not None else None


def get_delivery(conn: redis.Redis, tenant: str, delivery_id: str) -> Delivery | None:
    """The tenant's delivery, or None (unknown, expired, or another tenant's)."""
    record = _load(conn, delivery_id) if delivery_id.startswith("whd_") else None
    return record if record is not None and record.tenant == tenant else None


def _update(conn: redis.Redis, settings: CommonSettings, delivery_id: str, change: Callable[[Delivery], bool],
            also: Callable[[redis.client.Pipeline, Delivery], None] | None = None) -> Delivery | None:
    """Apply `change` to the stored record atomically (with `also`'s writes, if any); `change` returns False
    to leave it as it is. Returns the record as written, or None when it is gone or `change` declined."""
    key = keys.webhook_delivery(delivery_id)

    def write(pipe: redis.client.Pipeline) -> Delivery | None:
        record = _load(pipe, delivery_id)
        if record is None or not change(record):
            return None
        record.updated_at = time.time()
        pipe.multi()
        pipe.set(key, record.model_dump_json(), ex=settings.webhook_retention_s)
        if also is not None:
            also(pipe, record)
        return record

    return transaction(conn, write, key)


def send(conn: redis.Redis, settings: CommonSettings, delivery_id: str) -> None:
    """The delivery job: one attempt. Marks the record delivered, schedules the next attempt (`_retry`), or
    buries it. A record that is not pending, or waits in the due set for its next attempt, is not sent."""
    record = _load(conn, delivery_id)
    if record is None:
        log.warning("webhook delivery expired before it was sent", extra={"delivery": delivery_id})
        return
    # Waiting: this is a re-run of a job whose worker died after scheduling; `release_due` sends it when due.
    if record.status != Status.PENDING or conn.zscore(keys.WEBHOOK_DUE, delivery_id) is not None:
        return
    endpoint = _endpoint(conn, record.tenant)
    if endpoint is None:
        _bury(conn, settings, delivery_id, "the tenant has no webhook endpoint any more", None)
        return
    started = _start_attempt(conn, settings, delivery_id)
    if started is None:
        return  # another run delivered or buried it meanwhile
    status: int | None = None
    try:
        response = _post(endpoint, started, started.body.encode(), settings)
        status = response.status_code
        _judge(response)
    except Retryable as exc:
        _retry(conn, settings, started, exc, status)
        return
    except Refused as exc:
        _bury(conn, settings, delivery_id, str(exc), status)
        return
    answered = response.status_code
    _update(conn, settings, delivery_id, lambda r: _mark_delivered(r, answered))


def _post(endpoint: Endpoint, record: Delivery, body: bytes, settings: CommonSettings) -> httpx.Response:
    """One attempt: the receiver's answer, Retryable when it gave none (timeout, connection), or Refused
    before connecting when the host now is, or resolves to, an internal address."""
    try:
        # Checked again per attempt: the name may resolve elsewhere than when the endpoint was set, and the
        # setting may have changed. Another attempt would meet the same policy, so this is not retried.
        client = egress.client(endpoint.url, allow_private=settings.egress_allow_private,
                               timeout=settings.webhook_timeout_s)
    except egress.Blocked as exc:
        raise Refused(str(exc)) from exc
    headers = {"Content-Type": "application/json", EVENT_HEADER: record.event, DELIVERY_HEADER: record.id,
               **signing.header(endpoint.secret, body)}  # signed now: receivers refuse stale timestamps
    try:
        with client:
            response = client.post(endpoint.url, content=body, headers=headers)
    except httpx.TimeoutException as exc:
        raise Retryable("timeout", f"no answer within {client.timeout.read} s") from exc
    except httpx.TransportError as exc:
        raise Retryable("connection", f"{type(exc).__name__}: {exc}") from exc
    return response


def _judge(response: httpx.Response) -> None:
    """Nothing for a 2xx; otherwise Retryable (408, 429, 5xx) or Refused saying what the receiver answered."""
    if 200 <= response.status_code < 300:
        return
    said = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    answer = response.text.strip()[:ERROR_BODY_CHARS]
    message = f"{said}: {answer}" if answer else said
    verdict = classify_http_status(response.status_code, response.headers)
    if isinstance(verdict, Retryable):
        raise Retryable(verdict.cause, message, verdict.retry_after)
    if 300 <= response.status_code < 400:
        message += " (redirects are not followed: configure the final URL)"
    raise Refused(message)


def _retry(conn: redis.Redis, settings: CommonSettings, record: Delivery, exc: Retryable,
           status: int | None) -> None:
    """After a failed attempt: bury the delivery if that was its last, else note the error and put it in the
    due set at the time of its next attempt."""
    if record.attempts >= settings.webhook_max_attempts:
        _bury(conn, settings, record.id, str(exc), status)
        return
    wait_s = _wait_s(settings, record.attempts, exc.retry_after)
    due = time.time() + wait_s

    def note(r: Delivery) -> bool:
        if not _note_error(r, str(exc), status):
            return False
        r.next_attempt_at = due
        return True

    def schedule(pipe: redis.client.Pipeline, r: Delivery) -> None:
        pipe.zadd(keys.WEBHOOK_DUE, {r.id: due})
        pipe.expire(keys.WEBHOOK_DUE, settings.webhook_retention_s)

    if _update(conn, settings, record.id, note, schedule) is not None:
        metrics.inc(metrics.RETRIES, service="webhook", cause=exc.cause)
        log.info("webhook delivery will be retried", extra={
            "tenant": record.tenant, "delivery": record.id, "attempts": record.attempts, "cause": exc.cause,
            "wait_s": round(wait_s, 3)})


def _wait_s(settings: CommonSettings, attempts: int, retry_after: float | None) -> float:
    """The wait before the next attempt after `attempts` failed ones: the receiver's Retry-After if it sent
    one, else `webhook_retry_first_wait_s` doubling with each attempt plus up to as much again of jitter;
    either way at most `webhook_retry_max_wait_s`."""
    first, longest = settings.webhook_retry_first_wait_s, settings.webhook_retry_max_wait_s
    if retry_after is not None:
        return min(retry_after, longest)
    return min(first * 2.0 ** (attempts - 1) + random.uniform(0, first), longest)


def _start_attempt(conn: redis.Redis, settings: CommonSettings, delivery_id: str) -> Delivery | None:
    """Count an attempt, unless the delivery is no longer pending (a re-run job after it was delivered).
    Returns the record as counted, or None."""

    def count(record: Delivery) -> bool:
        if record.status != Status.PENDING:
            return False
        record.attempts += 1
        record.next_attempt_at = None
        return True

    return _update(conn, settings, delivery_id, count)


def _note_error(record: Delivery, error: str, status: int | None) -> bool:
    if record.status != Status.PENDING:
        return False
    record.last_error, record.response_status = error, status
    return True


def _mark_delivered(record: Delivery, status: int) -> bool:
    if record.status != Status.PENDING:
        return False
    record.status, record.response_status, record.delivered_at = Status.DELIVERED, status, time.time()
    record.last_error = None
    return True


def _bury(conn: redis.Redis, settings: CommonSettings, delivery_id: str, error: str, status: int | None) -> None:
    def dead(record: Delivery) -> bool:
        if record.status != Status.PENDING:
            return False
        record.status, record.last_error, record.response_status = Status.DEAD, error, status
        return True

    def listed(pipe: redis.client.Pipeline, record: Delivery) -> None:
        letters = keys.webhook_dead(record.tenant)
        pipe.lpush(letters, record.id)
        pipe.ltrim(letters, 0, DEAD_LETTERS_MAX - 1)
        pipe.expire(letters, settings.webhook_retention_s)

    record = _update(conn, settings, delivery_id, dead, listed)
    if record is not None:
        log.warning("webhook delivery failed for good", extra={
            "tenant": record.tenant, "event": record.event, "delivery": record.id, "attempts": record.attempts,
            "error": error})


# ---- retries that are due ----------------------------------------------------------------------------


def release_due(conn: redis.Redis, settings: CommonSettings, now: float | None = None) -> int:
    """Put deliveries whose next attempt is due back on the delivery queue; returns how many this call
    enqueued. Every worker's reaper calls it every tick: with nothing due it is one ZRANGEBYSCORE."""
    due = conn.zrangebyscore(keys.WEBHOOK_DUE, "-inf", time.time() if now is None else now, start=0,
                             num=RELEASE_MAX)
    return sum(_release(conn, settings, text(cast(bytes, raw)), now) for raw in due)


def _release(conn: redis.Redis, settings: CommonSettings, delivery_id: str, now: float | None) -> bool:
    """Move one due delivery from the due set to the queue, in one transaction: of two workers releasing it
    at once, only one enqueues it (the other finds it gone), and a worker dying halfway changes nothing."""

    def move(pipe: redis.client.Pipeline) -> bool:
        score = pipe.zscore(keys.WEBHOOK_DUE, delivery_id)
        if score is None or score > (time.time() if now is None else now):
            return False  # released by another worker, or rescheduled
        record = _load(pipe, delivery_id)
        pipe.multi()
        pipe.zrem(keys.WEBHOOK_DUE, delivery_id)
        if record is None or record.status != Status.PENDING:
            return False  # expired, or settled by a job that ran anyway: nothing left to send
        _enqueue(conn, pipe, settings, record)
        return True

    return transaction(conn, move, keys.WEBHOOK_DUE, keys.webhook_delivery(delivery_id))


# ---- dead letters -------------------------------------------------------------------------------------


def dead_letters(conn: redis.Redis, tenant: str, limit: int = 100) -> list[Delivery]:
    """The tenant's dead deliveries, newest first (ones expired or replayed since are left out)."""
    ids = [text(i) for i in conn.lrange(keys.webhook_dead(tenant), 0, -1)]
    if not ids:
        return []
    records = [Delivery.model_validate_json(raw) for raw in conn.mget([keys.webhook_delivery(i) for i in ids])
               if raw is not None]
    return [r for r in records if r.tenant == tenant and r.status == Status.DEAD][:limit]


def replay(conn: redis.Redis, settings: CommonSettings, tenant: str, delivery_id: str) -> Delivery:
    """Send a dead delivery again from its first attempt, to the endpoint as configured now.
    KeyError: no such delivery of this tenant. ValueError: it is not dead (pending or delivered)."""
    key = keys.webhook_delivery(delivery_id)

    def write(pipe: redis.client.Pipeline) -> Delivery:
        record = _load(pipe, delivery_id) if delivery_id.startswith("whd_") else None
        if record is None or record.tenant != tenant:
            raise KeyError(delivery_id)
        if record.status != Status.DEAD:
            raise ValueError(f"delivery {delivery_id} is {record.status.value}; only dead deliveries are replayed")
        record.status, record.attempts, record.last_error, record.response_status = Status.PENDING, 0, None, None
        record.next_attempt_at = None
        record.replays += 1
        record.updated_at = time.time()
        pipe.multi()
        pipe.set(key, record.model_dump_json(), ex=settings.webhook_retention_s)
        pipe.lrem(keys.webhook_dead(tenant), 0, delivery_id)
        pipe.zrem(keys.WEBHOOK_DUE, delivery_id)  # a dead delivery waits for nothing; make sure of it
        _enqueue(conn, pipe, settings, record)
        return record

    return transaction(conn, write, key)


# ---- the job ------------------------------------------------------------------------------------------


def task(conn: redis.Redis, settings: CommonSettings, resources: Any, delivery_id: str) -> None:
    """`DELIVER_TASK` as a worker's service runs it (`shared.worker.Service.tasks`); needs no model."""
    send(conn, settings, str(delivery_id))


def perform_delivery(delivery_id: str) -> None:
    """The function a delivery job names; only `voicequeue worker llm` runs it (`shared.worker.StageJob`)."""
    raise RuntimeError(f"webhook delivery {delivery_id}: delivery jobs run only in `voicequeue worker llm`")
