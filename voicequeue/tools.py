"""`voicequeue tools`: a tenant's custom tools through the gateway: add (or replace), list, remove, test.

`test` makes the real call the model would make, with the arguments given, and prints what came back
as JSON (exit 0 when the endpoint answered well, 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from voicequeue import http

ROUTE = "/v1/tools"
HTTP_TIMEOUT_S = 60.0  # the tool's own timeout is at most 30 s, so `test` always hears back
EXIT_USAGE = 2


def _json_arg(value: str, what: str) -> Any:
    """JSON given inline, or read from a file as @path."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from exc


def _client(args: argparse.Namespace) -> httpx.Client:
    return http.client(args.url, args.api_key, HTTP_TIMEOUT_S)


def add(args: argparse.Namespace) -> int:
    try:
        parameters = _json_arg(args.parameters, "--parameters")
    except (OSError, ValueError) as exc:
        print(f"voicequeue tools add: {exc}", file=sys.stderr)
        return EXIT_USAGE
    spec: dict[str, Any] = {"name": args.name, "description": args.description, "url": args.tool_url,
                            "parameters": parameters}
    if args.tool_timeout is not None:
        spec["timeout_s"] = args.tool_timeout
    if args.filler is not None:
        spec["filler"] = args.filler
    with _client(args) as client:
        response = client.post(ROUTE, json=spec)
    if response.status_code != 201:
        print(f"voicequeue tools add: {args.name}: {http.error_text(response)}", file=sys.stderr)
        return 1
    tool = response.json()
    print(f"added {tool['name']} -> {tool['url']} (timeout {tool['timeout_s']:g} s)")
    return 0


def listing(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.get(ROUTE)
    if response.status_code != 200:
        print(f"voicequeue tools list: {http.error_text(response)}", file=sys.stderr)
        return 1
    found = response.json()["tools"]
    for tool in found:
        print(f"{tool['name']}\t{tool['url']}\t{tool['timeout_s']:g} s\t{tool['description']}")
    print(f"{len(found)} tool(s)", file=sys.stderr)
    return 0


def remove(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return http.delete_each(client, ROUTE, args.names, "tools remove")


def test(args: argparse.Namespace) -> int:
    try:
        arguments = _json_arg(args.arguments, "--arguments")
    except (OSError, ValueError) as exc:
        print(f"voicequeue tools test: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with _client(args) as client:
        response = client.post(f"{ROUTE}/{args.name}/test", json={"arguments": arguments})
    if response.status_code != 200:
        print(f"voicequeue tools test: {args.name}: {http.error_text(response)}", file=sys.stderr)
        return 1
    outcome = response.json()
    print(json.dumps(outcome, ensure_ascii=False, indent=2))
    return 0 if outcome.get("ok") else 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # `--url` is the tool's endpoint (`add`), so the gateway is `--gateway` throughout this command.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--gateway", dest="url", default=None,
                        help="gateway base URL (default: from VQ_GATEWAY_HOST/PORT)")
    parent.add_argument("--api-key", default=os.environ.get("VQ_API_KEY"),
                        help="the tenant's API key when auth is on (default: $VQ_API_KEY)")
    parent.set_defaults(fn=run)
    top = sub.add_parser("tools", help="the tenant's custom tools the LLM may call: add, list, remove, test")
    tsub = top.add_subparsers(dest="tools_command", required=True)
    add_p = tsub.add_parser("add", parents=[parent], help="register a tool (the same name replaces it)")
    add_p.add_argument("name")
    add_p.add_argument("--description", required=True, help="when the model should call it")
    add_p.add_argument("--url", dest="tool_url", required=True, help="the tool's endpoint (https)")
    add_p.add_argument("--parameters", required=True, help="JSON Schema of the arguments, inline or @file.json")
    add_p.add_argument("--timeout", dest="tool_timeout", type=float, default=None,
                       help="seconds the tool may take, 0.5-30 (default 5)")
    add_p.add_argument("--filler", default=None, help="what the bot says while the tool is slow")
    add_p.set_defaults(tools_fn=add)
    tsub.add_parser("list", parents=[parent], help="the tenant's tools").set_defaults(tools_fn=listing)
    rm = tsub.add_parser("remove", parents=[parent], help="delete tools by name")
    rm.add_argument("names", nargs="+")
    rm.set_defaults(tools_fn=remove)
    test_p = tsub.add_parser("test", parents=[parent], help="call a tool for real with the arguments given")
    test_p.add_argument("name")
    test_p.add_argument("--arguments", default="{}", help="the arguments as JSON, inline or @file.json")
    test_p.set_defaults(tools_fn=test)


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.tools_fn(args))
    except httpx.HTTPError as exc:
        print(f"voicequeue tools: gateway at {args.url}: {exc}", file=sys.stderr)
        return 1
