"""Who is calling: the tenant behind the request's API key (or the open tenant while auth is off)."""

from __future__ import annotations

import redis

from services.gateway import keystore
from services.gateway.config import GatewaySettings
from services.gateway.errors import ApiError
from shared.tenants import OPEN_TENANT


def resolve(conn: redis.Redis, settings: GatewaySettings, authorization: str | None) -> str:
    """The caller's tenant. Raises a 401 ApiError for a missing, malformed, unknown or revoked key."""
    if not keystore.auth_enabled(conn, settings.auth_required):
        return OPEN_TENANT
    scheme, _, token = (authorization or "").partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="voicequeue"'}
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing_api_key", "send an API key as 'Authorization: Bearer <key>'", challenge)
    tenant = keystore.tenant_of(conn, token.strip())
    if tenant is None:
        raise ApiError(401, "invalid_api_key", "the API key is unknown or has been revoked", challenge)
    return tenant
