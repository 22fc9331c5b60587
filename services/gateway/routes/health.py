"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rq import Queue, Worker

from services.gateway.deps import RedisDep
from shared import queues

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def queue_workers(conn: redis.Redis) -> dict[str, int]:
    return {name: Worker.count(connection=conn, queue=Queue(name, connection=conn)) for name in queues.all_names()}


@router.get("/readyz")
def readyz(conn: RedisDep) -> JSONResponse:
    """Ready when Redis answers and every queue has at least one live worker."""
    report: dict[str, Any] = {"redis": "ok"}
    try:
        conn.ping()
        workers = queue_workers(conn)
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
