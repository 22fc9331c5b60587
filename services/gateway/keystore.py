"""API keys and the tenants they belong to.

A key is `vq_<key id>_<secret>`: the id names it in listings and revocation, the
32-byte secret makes it unguessable. Only the SHA-256 of the whole key is stored,
so a dump of Redis cannot be replayed as credentials. Auth switches itself on
with the first key and stays on (or always, with `VQ_AUTH_REQUIRED=true`).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import redis

from shared import keys
from shared.redisio import text
from shared.tenants import OPEN_TENANT

KEYS_BY_HASH = keys.API_KEYS
KEY_IDS = keys.API_KEY_IDS
# Set by the first key, never cleared by revoking: revoking the last key must not open the API.
AUTH_ON = keys.AUTH_ON


@dataclass(frozen=True)
class Key:
    key_id: str
    tenant: str
    created_at: float


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant_name(tenant: str) -> str:
    if not tenant or len(tenant) > 64 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in tenant):
        raise ValueError("a tenant name is 1-64 letters, digits, '-', '_' or '.'")
    if tenant == OPEN_TENANT:
        raise ValueError(f"{OPEN_TENANT!r} is reserved for requests made while auth is off")
    return tenant


def create(conn: redis.Redis, tenant: str) -> tuple[str, Key]:
    """A new key for `tenant`. The plain key is returned once and never stored."""
    check_tenant_name(tenant)
    key_id = secrets.token_hex(4)
    plain = f"vq_{key_id}_{secrets.token_urlsafe(32)}"
    created = time.time()
    pipe = conn.pipeline()
    pipe.hset(KEYS_BY_HASH, _digest(plain), f"{key_id} {tenant}")
    pipe.hset(KEY_IDS, key_id, f"{_digest(plain)} {tenant} {created}")
    pipe.set(AUTH_ON, created)
    pipe.execute()
    return plain, Key(key_id, tenant, created)


def revoke(conn: redis.Redis, key_or_id: str) -> Key | None:
    """Revoke by key id or by the whole key. Returns the revoked key, None if unknown."""
    key_id = key_or_id.split("_")[1] if key_or_id.startswith("vq_") and key_or_id.count("_") >= 2 else key_or_id
    entry = conn.hget(KEY_IDS, key_id)
    if entry is None:
        return None
    digest, tenant, created = text(entry).split(" ")
    pipe = conn.pipeline()
    pipe.hdel(KEYS_BY_HASH, digest)
    pipe.hdel(KEY_IDS, key_id)
    pipe.execute()
    return Key(key_id, tenant, float(created))


def list_keys(conn: redis.Redis) -> list[Key]:
    found = []
    for key_id, entry in conn.hgetall(KEY_IDS).items():
        _, tenant, created = text(entry).split(" ")
        found.append(Key(text(key_id), tenant, float(created)))
    return sorted(found, key=lambda k: k.created_at)


def tenant_of(conn: redis.Redis, key: str) -> str | None:
    """The tenant a presented key belongs to, or None if it is unknown or revoked."""
    entry = conn.hget(KEYS_BY_HASH, _digest(key))
    return text(entry).split(" ", 1)[1] if entry is not None else None


def auth_enabled(conn: redis.Redis, required: bool) -> bool:
    """On when required, or once any key was ever created (deleting `keys.AUTH_ON` by hand reopens the API)."""
    return required or bool(conn.exists(AUTH_ON))
