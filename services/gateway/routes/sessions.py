"""A conversation's remembered turns: read or forget them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from services.gateway.deps import RedisDep, TenantDep
from services.gateway.errors import ApiError
from services.gateway.validate import check_session_id
from shared import sessions

router = APIRouter(tags=["sessions"])


@router.get("/v1/sessions/{session_id}")
def get_session(session_id: str, conn: RedisDep, tenant: TenantDep) -> dict[str, Any]:
    """The session's last turns, oldest first, and how long it lives on without a new turn."""
    check_session_id(session_id)
    session = sessions.get(conn, session_id, tenant=tenant)
    if session is None:
        raise ApiError(404, "session_not_found", f"no session with id {session_id!r} (unknown or expired)")
    return session


@router.delete("/v1/sessions/{session_id}", status_code=204)
def delete_session(session_id: str, conn: RedisDep, tenant: TenantDep) -> Response:
    check_session_id(session_id)
    if not sessions.delete(conn, session_id, tenant=tenant):
        raise ApiError(404, "session_not_found", f"no session with id {session_id!r} (unknown or expired)")
    return Response(status_code=204)
