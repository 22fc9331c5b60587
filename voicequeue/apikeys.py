"""`voicequeue keys`: create, list and revoke API keys (straight in Redis, VQ_REDIS_URL).

The plain key is printed once, by `create`, and stored nowhere: only its SHA-256
is kept. `list` shows ids, tenants and creation times, never secrets.
"""

from __future__ import annotations

import argparse
import sys
import time

import redis

from services.gateway import keystore
from shared import connection
from shared.config import CommonSettings


def _conn() -> redis.Redis:
    return connection.client(CommonSettings())


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def create(args: argparse.Namespace) -> int:
    try:
        keystore.check_tenant_name(args.tenant)
    except ValueError as exc:
        print(f"voicequeue keys create: {exc}", file=sys.stderr)
        return 2
    plain, key = keystore.create(_conn(), args.tenant)
    print(plain)
    # The notes go to stderr, so `KEY=$(voicequeue keys create --tenant t)` captures the key alone.
    print(f"key id {key.key_id} for tenant {key.tenant!r}. This is the only time the key is shown: "
          f"keep it now. Send it as 'Authorization: Bearer <key>'; revoke with `voicequeue keys revoke "
          f"{key.key_id}`.", file=sys.stderr)
    return 0


def revoke(args: argparse.Namespace) -> int:
    key = keystore.revoke(_conn(), args.key)
    if key is None:
        print("voicequeue keys revoke: no such key (unknown id, or already revoked)", file=sys.stderr)
        return 1
    print(f"revoked key {key.key_id} of tenant {key.tenant!r}")
    return 0


def list_(args: argparse.Namespace) -> int:
    found = keystore.list_keys(_conn())
    if not found:
        print("no API keys: auth is off unless VQ_AUTH_REQUIRED=true", file=sys.stderr)
        return 0
    print(f"{'ID':<10} {'TENANT':<24} CREATED")
    for key in found:
        print(f"{key.key_id:<10} {key.tenant:<24} {_when(key.created_at)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.keys_fn(args))
    except redis.RedisError as exc:
        print(f"voicequeue keys: cannot reach Redis at {CommonSettings().redis_url}: {exc}", file=sys.stderr)
        return 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser("keys", help="API keys: create (one per tenant or more), list, revoke")
    ksub = top.add_subparsers(dest="keys_command", required=True)
    make = ksub.add_parser("create", help="a new key for a tenant; printed once, stored only hashed. "
                           "The first key switches auth on")
    make.add_argument("--tenant", required=True, help="tenant name: 1-64 letters, digits, '-', '_' or '.'")
    make.set_defaults(fn=_run, keys_fn=create)
    gone = ksub.add_parser("revoke", help="revoke a key by its id or by the whole key")
    gone.add_argument("key", metavar="KEY_OR_ID")
    gone.set_defaults(fn=_run, keys_fn=revoke)
    listing = ksub.add_parser("list", help="key ids, tenants and creation times (never the keys)")
    listing.set_defaults(fn=_run, keys_fn=list_)
