"""`voicequeue webhooks`: the tenant's webhook endpoint and dead letters through the gateway.

`set` prints the signing secret (receivers need it to verify deliveries; see docs/webhooks.md), `show`
the endpoint with the secret masked, `dead` the deliveries that failed for good, `replay` sends one again.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from voicequeue import http

ROUTE = "/v1/webhooks"


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def _events(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [e.strip() for e in value.split(",") if e.strip()]


def set_endpoint(client: httpx.Client, args: argparse.Namespace) -> int:
    response = client.put(ROUTE, json={"url": args.webhook_url, "events": _events(args.events),
                                       "rotate_secret": args.rotate_secret})
    if response.status_code != 200:
        print(f"voicequeue webhooks set: {http.error_text(response)}", file=sys.stderr)
        return 1
    endpoint = response.json()
    print(f"url:    {endpoint['url']}")
    print(f"events: {', '.join(endpoint['events']) if endpoint['events'] else 'all'}")
    print(f"secret: {endpoint['secret']}")
    print("verify each delivery's X-Voicequeue-Signature with this secret (docs/webhooks.md)", file=sys.stderr)
    return 0


def show(client: httpx.Client, args: argparse.Namespace) -> int:
    response = client.get(ROUTE)
    if response.status_code != 200:
        print(f"voicequeue webhooks show: {http.error_text(response)}", file=sys.stderr)
        return 1
    endpoint = response.json()
    print(f"url:     {endpoint['url']}")
    print(f"events:  {', '.join(endpoint['events']) if endpoint['events'] else 'all'}")
    print(f"secret:  {endpoint['secret']}")
    print(f"updated: {_when(endpoint.get('updated_at'))}")
    return 0


def dead(client: httpx.Client, args: argparse.Namespace) -> int:
    response = client.get(f"{ROUTE}/dead", params={"limit": args.limit})
    if response.status_code != 200:
        print(f"voicequeue webhooks dead: {http.error_text(response)}", file=sys.stderr)
        return 1
    letters: list[dict[str, Any]] = response.json()["dead"]
    if args.json:
        print(json.dumps(letters, ensure_ascii=False, indent=2))
    for d in [] if args.json else letters:
        print(f"{d['id']}\t{d['event']}\t{_when(d['created_at'])}\t{d['attempts']} attempt(s)\t{d['last_error']}")
    print(f"{len(letters)} dead letter(s)", file=sys.stderr)
    return 0


def replay(client: httpx.Client, args: argparse.Namespace) -> int:
    code = 0
    for ident in args.ids:
        response = client.post(f"{ROUTE}/dead/{ident}/replay")
        if response.status_code == 202:
            print(f"{ident}\t{response.json()['status']}")
        else:
            print(f"voicequeue webhooks replay: {ident}: {http.error_text(response)}", file=sys.stderr)
            code = 1
    return code


def run(args: argparse.Namespace) -> int:
    if args.url is None:
        args.url = args.default_url()
    command: Callable[[httpx.Client, argparse.Namespace], int] = args.webhooks_fn
    try:
        with http.client(args.url, args.api_key, args.timeout) as client:
            return command(client, args)
    except httpx.HTTPError as exc:
        print(f"voicequeue webhooks: gateway at {args.url}: {exc}", file=sys.stderr)
        return 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser,
               default_url: Callable[[], str]) -> None:
    """`parent` gives --url, --api-key and --timeout (as for `voicequeue kb`); `default_url()` is the
    gateway's URL from the settings, asked only when --url is not given."""
    top = sub.add_parser("webhooks", help="the tenant's webhook endpoint and dead letters")
    wsub = top.add_subparsers(dest="webhooks_command", required=True)
    set_p = wsub.add_parser("set", parents=[parent], help="send events to URL; prints the signing secret")
    set_p.add_argument("webhook_url", metavar="URL", help="an http:// or https:// URL")
    set_p.add_argument("--events", help="comma-separated events to send (default: all)")
    set_p.add_argument("--rotate-secret", action="store_true", help="make a new signing secret")
    set_p.set_defaults(webhooks_fn=set_endpoint)
    show_p = wsub.add_parser("show", parents=[parent], help="the endpoint, its secret masked")
    show_p.set_defaults(webhooks_fn=show)
    dead_p = wsub.add_parser("dead", parents=[parent], help="deliveries that failed for good, newest first")
    dead_p.add_argument("--limit", type=int, default=100)
    dead_p.add_argument("--json", action="store_true", help="the full records as JSON")
    dead_p.set_defaults(webhooks_fn=dead)
    replay_p = wsub.add_parser("replay", parents=[parent], help="send dead letters again, by id")
    replay_p.add_argument("ids", nargs="+", metavar="ID")
    replay_p.set_defaults(webhooks_fn=replay)
    for p in (set_p, show_p, dead_p, replay_p):
        p.set_defaults(fn=run, default_url=default_url)  # fn: over the parent's `voicequeue kb` handler
