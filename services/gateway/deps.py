"""FastAPI dependencies: settings, Redis connections, the blob store."""

from __future__ import annotations

from typing import Annotated

import redis
import redis.asyncio as aioredis
from fastapi import Depends, Request

from services.gateway import auth
from services.gateway.config import GatewaySettings
from shared import logs
from shared.blobs import RedisBlobStore


def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


def get_redis(request: Request) -> redis.Redis:
    conn: redis.Redis = request.app.state.redis
    return conn


def get_aredis(request: Request) -> aioredis.Redis:
    conn: aioredis.Redis = request.app.state.aredis
    return conn


def get_blobs(conn: Annotated[redis.Redis, Depends(get_redis)]) -> RedisBlobStore:
    return RedisBlobStore(conn)


def get_tenant(request: Request) -> str:
    """The caller's tenant; also left on `request.state.tenant` for logs and limits."""
    tenant = getattr(request.state, "tenant", None)  # the admission middleware resolved it already
    if tenant is None:
        tenant = auth.resolve(request.app.state.redis, request.app.state.settings,
                              request.headers.get("authorization"))
        request.state.tenant = tenant
    logs.bind(tenant=tenant)
    return str(tenant)


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
AsyncRedisDep = Annotated[aioredis.Redis, Depends(get_aredis)]
BlobsDep = Annotated[RedisBlobStore, Depends(get_blobs)]
TenantDep = Annotated[str, Depends(get_tenant)]
