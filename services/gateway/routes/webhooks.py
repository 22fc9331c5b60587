"""The tenant's webhook endpoint, its deliveries and its dead letters (see docs/webhooks.md).

`PUT` answers with the signing secret, which the tenant needs to verify deliveries; `GET` shows it
masked. A delivery id of another tenant is answered exactly like an unknown one (404).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import Field

from services.gateway.deps import RedisDep, SettingsDep, TenantDep
from services.gateway.errors import ApiError
from services.gateway.validate import StrictBody
from shared import webhooks

router = APIRouter(tags=["webhooks"])

SHOWN_SECRET_CHARS = 4


class EndpointRequest(StrictBody):
    url: str = Field(description="Where events are POSTed: an https:// URL (http:// only to 127.0.0.1, localhost "
                     "or ::1, unless the operator allows it), not at an internal address (see docs/webhooks.md, "
                     "Outbound requests).")
    events: list[str] | None = Field(None, description=f"Events to send ({', '.join(webhooks.EVENTS)}); "
                                     "null: all of them.")
    rotate_secret: bool = Field(False, description="Make a new signing secret (the old one stops verifying).")


def _shown(endpoint: webhooks.Endpoint, *, reveal: bool) -> dict[str, Any]:
    out = endpoint.model_dump(mode="json")
    if not reveal:
        out["secret"] = "whsec_…" + endpoint.secret[-SHOWN_SECRET_CHARS:]
    return out


@router.put("/v1/webhooks")
def set_endpoint(body: EndpointRequest, conn: RedisDep, settings: SettingsDep, tenant: TenantDep) -> dict[str, Any]:
    """Create or change the endpoint; the answer holds the signing secret (kept unless `rotate_secret`).
    A URL whose host is, or resolves to, an internal address is refused unless the operator allows them, and
    so is plain http to a host other than loopback."""
    try:
        webhooks.check_events(body.events)
    except ValueError as exc:
        raise ApiError(400, "invalid_webhook_events", str(exc)) from exc
    try:  # the events are fine, so a refusal is the URL's (checked once: its host is looked up)
        endpoint = webhooks.set_endpoint(conn, tenant, body.url, body.events, rotate=body.rotate_secret,
                                         allow_http=settings.webhooks_allow_http,
                                         allow_private=settings.egress_allow_private)
    except ValueError as exc:
        raise ApiError(400, "invalid_webhook_url", str(exc)) from exc
    return _shown(endpoint, reveal=True)


def _endpoint(conn: RedisDep, tenant: str) -> webhooks.Endpoint:
    endpoint = webhooks.get_endpoint(conn, tenant)
    if endpoint is None:
        raise ApiError(404, "webhook_not_configured", "no webhook endpoint is set: PUT /v1/webhooks {url}")
    return endpoint


@router.get("/v1/webhooks")
def get_endpoint(conn: RedisDep, tenant: TenantDep) -> dict[str, Any]:
    """The endpoint, its secret masked to the last characters."""
    return _shown(_endpoint(conn, tenant), reveal=False)


@router.delete("/v1/webhooks", status_code=204)
def delete_endpoint(conn: RedisDep, tenant: TenantDep) -> Response:
    """Stop sending events; deliveries still queued end as dead letters."""
    if not webhooks.delete_endpoint(conn, tenant):
        raise ApiError(404, "webhook_not_configured", "no webhook endpoint is set")
    return Response(status_code=204)


def _not_found(delivery_id: str) -> ApiError:
    return ApiError(404, "delivery_not_found", f"no webhook delivery with id {delivery_id!r}")


@router.get("/v1/webhooks/deliveries/{delivery_id}")
def get_delivery(delivery_id: str, conn: RedisDep, tenant: TenantDep) -> dict[str, Any]:
    """A delivery: status (pending, delivered, dead), attempts, the receiver's last status and error."""
    record = webhooks.get_delivery(conn, tenant, delivery_id)
    if record is None:
        raise _not_found(delivery_id)
    return record.public()


@router.get("/v1/webhooks/dead")
def dead_letters(conn: RedisDep, tenant: TenantDep,
                 limit: int = Query(100, ge=1, le=webhooks.DEAD_LETTERS_MAX)) -> dict[str, Any]:
    """Deliveries that failed for good, newest first, each with its last error."""
    return {"dead": [d.public() for d in webhooks.dead_letters(conn, tenant, limit)]}


@router.post("/v1/webhooks/dead/{delivery_id}/replay", status_code=202)
def replay(delivery_id: str, conn: RedisDep, settings: SettingsDep, tenant: TenantDep) -> dict[str, Any]:
    """Send a dead letter again, from its first attempt, to the endpoint as set now."""
    try:
        return webhooks.replay(conn, settings, tenant, delivery_id).public()
    except KeyError as exc:
        raise _not_found(delivery_id) from exc
    except ValueError as exc:
        raise ApiError(409, "delivery_not_dead", str(exc)) from exc
