"""`voicequeue keys create|list|revoke` as a real subprocess against a real Redis; keys are stored only hashed."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import redis

from services.gateway import keystore
from shared.tenants import OPEN_TENANT
from tests.stack import free_port

VOICEQUEUE = str(Path(sys.executable).parent / "voicequeue")


def keys_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VOICEQUEUE, "keys", *args], env={**os.environ, "VQ_REDIS_URL": redis_url},
                          capture_output=True, text=True, timeout=60)


def everything_in(conn: redis.Redis) -> bytes:
    """Every key name and value in the database, as one blob to search."""
    out = []
    for name in conn.scan_iter():
        out.append(name)
        kind = conn.type(name)
        if kind == b"hash":
            for field, value in conn.hgetall(name).items():
                out += [field, value]
        elif kind == b"string":
            out.append(conn.get(name) or b"")
        elif kind == b"list":
            out += conn.lrange(name, 0, -1)
        elif kind in (b"set", b"zset"):
            out += list(conn.smembers(name)) if kind == b"set" else conn.zrange(name, 0, -1)
    return b"\n".join(out)


def test_create_list_revoke(redis_url: str, conn: redis.Redis) -> None:
    assert keys_cli(redis_url, "list").returncode == 0
    assert not keystore.auth_enabled(conn, required=False)

    made = keys_cli(redis_url, "create", "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    m = re.fullmatch(r"vq_([0-9a-f]{8})_([A-Za-z0-9_-]{40,})", key)
    assert m, made.stdout  # stdout is the key alone, so scripts can capture it
    key_id, secret = m.groups()
    assert key_id in made.stderr and "acme" in made.stderr and secret not in made.stderr
    assert keystore.tenant_of(conn, key) == "acme"
    assert keystore.auth_enabled(conn, required=False)

    other = keys_cli(redis_url, "create", "--tenant", "globex").stdout.strip()
    assert keystore.tenant_of(conn, other) == "globex" and other != key

    # Stored only as SHA-256: neither the key nor its secret part is anywhere in Redis.
    dump = everything_in(conn)
    for plain in (key, other):
        assert plain.encode() not in dump
        assert plain.split("_", 2)[2].encode() not in dump
        assert hashlib.sha256(plain.encode()).hexdigest().encode() in dump

    listed = keys_cli(redis_url, "list")
    assert listed.returncode == 0
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [(key_id, "acme"), (other.split("_")[1], "globex")]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r[2]) for r in rows)
    assert secret not in listed.stdout and "vq_" not in listed.stdout

    gone = keys_cli(redis_url, "revoke", key_id)
    assert gone.returncode == 0 and key_id in gone.stdout
    assert keystore.tenant_of(conn, key) is None
    assert key_id not in keys_cli(redis_url, "list").stdout

    again = keys_cli(redis_url, "revoke", key_id)
    assert again.returncode == 1 and "no such key" in again.stderr
    unknown = keys_cli(redis_url, "revoke", "deadbeef")
    assert unknown.returncode == 1 and "no such key" in unknown.stderr

    # Revoking by the whole key works too.
    assert keys_cli(redis_url, "revoke", other).returncode == 0
    assert keystore.tenant_of(conn, other) is None
    assert keystore.list_keys(conn) == []
    # Revoking the last key must not reopen the API to everyone.
    assert keystore.auth_enabled(conn, required=False)
    reserved = keys_cli(redis_url, "create", "--tenant", OPEN_TENANT)
    assert reserved.returncode == 2 and "reserved" in reserved.stderr


def test_bad_tenant_name_and_unreachable_redis(redis_url: str, conn: redis.Redis) -> None:
    for bad in ("", "has space", "a:b", "x" * 65):
        r = keys_cli(redis_url, "create", "--tenant", bad)
        assert r.returncode == 2, (bad, r.stdout)
        assert "tenant name" in r.stderr
    assert keystore.list_keys(conn) == []

    dead = f"redis://127.0.0.1:{free_port()}/0"
    r = keys_cli(dead, "list")
    assert r.returncode == 1 and "cannot reach Redis" in r.stderr
