"""GET /v1/calls/{id}: a call's record (transcripts with times, barge-ins, latencies, cost), for its tenant."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.gateway.calls import store
from services.gateway.deps import RedisDep, TenantDep
from services.gateway.errors import ApiError

router = APIRouter(tags=["calls"])


@router.get("/v1/calls/{call_id}")
def get_call(call_id: str, conn: RedisDep, tenant: TenantDep) -> dict[str, Any]:
    record = store.load(conn, call_id)
    if record is None or record["tenant"] != tenant:
        raise ApiError(404, "call_not_found", f"no call with id {call_id!r}")
    return record
