"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rq import Queue, Worker

from services.gateway import keystore
from services.gateway.config import GatewaySettings
from services.gateway.deps import RedisDep, SettingsDep
from shared import queues
from shared.tenants import OPEN_TENANT

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


def auth_state(conn: redis.Redis, settings: GatewaySettings) -> str:
    """"on" once a key exists (or VQ_AUTH_REQUIRED is set), otherwise "off"."""
    return "on" if keystore.auth_enabled(conn, settings.auth_required) else "off"


def warn_if_open(conn: redis.Redis, settings: GatewaySettings) -> None:
    """Say loudly at start when anyone can use the API: every caller is then the one open tenant."""
    try:
        state = auth_state(conn, settings)
    except redis.RedisError as exc:
        log.warning("cannot tell whether auth is on: Redis is unreachable (%s)", exc)
        return
    if state == "off":
        log.warning("auth is OFF: no API key exists and VQ_AUTH_REQUIRED is false, so every request is served "
                    "without a key as tenant %r. Create a key with `voicequeue keys create --tenant NAME` "
                    "or set VQ_AUTH_REQUIRED=true.", OPEN_TENANT)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def queue_workers(conn: redis.Redis) -> dict[str, int]:
    return {name: Worker.count(connection=conn, queue=Queue(name, connection=conn)) for name in queues.all_names()}


@router.get("/readyz")
def readyz(conn: RedisDep, settings: SettingsDep) -> JSONResponse:
    """Ready when Redis answers and every queue has at least one live worker; `auth` says whether keys are needed."""
    report: dict[str, Any] = {"redis": "ok"}
    try:
        conn.ping()
        workers = queue_workers(conn)
        report["auth"] = auth_state(conn, settings)
    except redis.RedisError as exc:
        return JSONResponse({"status": "unavailable", "redis": f"error: {exc}"}, status_code=503)
    report["workers"] = workers
    missing = [name for name, count in workers.items() if count == 0]
    report["status"] = "ready" if not missing else "degraded"
    if missing:
        report["queues_without_workers"] = missing
    return JSONResponse(report, status_code=200 if not missing else 503)


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
