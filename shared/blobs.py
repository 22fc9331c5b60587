"""Audio blobs (uploads and synthesized speech) behind one small interface.

Redis is the default store: blobs expire with a TTL like the rest of a job.
"""

from __future__ import annotations

import secrets
from typing import Protocol

import redis

from shared import keys
from shared.tenants import OPEN_TENANT


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class BlobStore(Protocol):
    def put(self, data: bytes, content_type: str, ttl_s: int, blob_id: str | None = None,
            tenant: str = OPEN_TENANT) -> str: ...
    def get(self, blob_id: str) -> tuple[bytes, str] | None: ...
    def delete(self, *blob_ids: str) -> None: ...


class RedisBlobStore:
    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    @staticmethod
    def key(blob_id: str) -> str:
        return keys.blob(blob_id)

    def put(self, data: bytes, content_type: str, ttl_s: int, blob_id: str | None = None,
            tenant: str = OPEN_TENANT) -> str:
        blob_id = blob_id or secrets.token_urlsafe(16)
        pipe = self.conn.pipeline()
        pipe.hset(self.key(blob_id),
                  mapping={keys.BLOB_DATA: data, keys.BLOB_TYPE: content_type, keys.BLOB_TENANT: tenant})
        pipe.expire(self.key(blob_id), ttl_s)
        pipe.execute()
        return blob_id

    def get(self, blob_id: str) -> tuple[bytes, str] | None:
        data, type_ = self.conn.hmget(self.key(blob_id), [keys.BLOB_DATA, keys.BLOB_TYPE])
        if data is None:
            return None
        return _as_bytes(data), _as_bytes(type_ or b"application/octet-stream").decode()

    def tenant(self, blob_id: str) -> str | None:
        """The tenant owning a blob, None if it does not exist (blobs written before tenants: the open one)."""
        if not self.conn.exists(self.key(blob_id)):
            return None
        value = self.conn.hget(self.key(blob_id), keys.BLOB_TENANT)
        return _as_bytes(value).decode() if value is not None else OPEN_TENANT

    def delete(self, *blob_ids: str) -> None:
        if blob_ids:
            self.conn.delete(*(self.key(b) for b in blob_ids))
