"""A tenant's custom tools: functions the LLM may call, each an HTTPS endpoint of the tenant's.

A tool is stored per tenant (`put`, `get`, `list_tools`, `delete`), offered to the model in the OpenAI
`tools=` shape (`openai_tools`), its arguments checked against its JSON Schema (`check_arguments`) and
finally called (`call`): a signed JSON POST whose answer, or failure, comes back as a `ToolOutcome`.
`call` never raises and never takes longer than the tool's timeout, because a caller is waiting on the line.
A tool's host must not be, or resolve to, an internal address (`shared.egress`): checked when the tool is
registered and again at every call.

Tools are kept until deleted (no TTL): `keys.PERMANENT` spares them from the retention sweep.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from referencing.exceptions import Unresolvable

from shared import egress, keys, signing
from shared.redisio import transaction

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
BUILTIN = ("transfer_to_human", "end_call", "create_ticket")  # handled by the LLM stage itself
HEADER_TOOL = "X-Voicequeue-Tool"
ALLOW_HTTP = "allow_http"  # validation context key: the `tools_allow_http` setting
ALLOW_PRIVATE = "allow_private"  # validation context key: the `egress_allow_private` setting
HTTP_SETTING = "VQ_TOOLS_ALLOW_HTTP"
MAX_SCHEMA_BYTES = 16 * 1024  # the schema goes into every prompt that offers the tool
MAX_BODY_BYTES = 64 * 1024  # what is read of a tool's answer, so a tool cannot flood the prompt
MAX_TEXT_CHARS = 2000  # a non-JSON answer or an error body is shown this far
MAX_RETRY_AFTER_S = 1.0  # a 429/503 is retried once only if it asks for no more than this
DEFAULT_MAX_TOOLS = 32


class TooManyTools(ValueError):
    """The tenant already has as many tools as allowed."""


class ReservedName(ValueError):
    """The name of a built-in tool."""


class Tool(BaseModel):
    """A tenant's tool as `GET /v1/tools/{name}` shows it and the LLM is offered it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="What the model calls it: [A-Za-z_][A-Za-z0-9_-]{0,63}; the same name replaces.")
    description: str = Field(min_length=1, max_length=1000, description="When the model should call it.")
    parameters: dict[str, Any] = Field(description='A JSON Schema (2020-12) of the arguments, {"type": "object"}.')
    url: str = Field(max_length=2048, description="The endpoint called with a signed POST (https).")
    timeout_s: float = Field(5.0, ge=0.5, le=30.0, description="Longest wait for the endpoint, in total.")
    filler: str | None = Field(None, max_length=300, description="What the bot says while a slow tool runs.")
    created_at: float = Field(default_factory=time.time)
    updated_at: float | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("a tool name is 1-64 characters of [A-Za-z0-9_-], starting with a letter or _")
        if value.lower() in BUILTIN:
            raise ReservedName(f"{value!r} is a built-in tool ({', '.join(BUILTIN)}); choose another name")
        return value

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the description is blank: say when the model should call this tool")
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_schema(value)
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        context = info.context or {}
        check_url(value, allow_http=bool(context.get(ALLOW_HTTP, False)),
                  allow_private=bool(context.get(ALLOW_PRIVATE, False)))
        return value


class ToolOutcome(BaseModel):
    """What a tool call gave: its parsed JSON `result` when `ok`, else an `error` saying what went wrong
    (with the status and the body, as far as there was one)."""

    ok: bool
    status: int | None = None
    result: Any = None
    error: str | None = None
    elapsed_s: float = 0.0


def check_schema(schema: Any) -> None:
    """Refuse what is not a JSON Schema of an object (ValueError saying why)."""
    if not isinstance(schema, dict):
        raise ValueError("must be a JSON Schema object")
    if schema.get("type") != "object":
        raise ValueError('must be a JSON Schema with "type": "object" (the arguments are an object)')
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise ValueError(f"not a valid JSON Schema{f' at {where}' if where else ''}: "
                         f"{exc.message}") from None
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"larger than {MAX_SCHEMA_BYTES // 1024} KB")
    outside = [ref for ref in _refs(schema) if not ref.startswith("#")]
    if outside:
        raise ValueError(f"$ref {outside[0]!r} points outside the schema: only local references (#/...) are "
                         "allowed, schemas are never fetched")


def _refs(node: Any) -> list[str]:
    """Every "$ref" / "$dynamicRef" value in a schema (non-strings as their text)."""
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    if not isinstance(node, dict):
        return []
    own = [str(v) for k, v in node.items() if k in ("$ref", "$dynamicRef")]
    return own + [ref for value in node.values() for ref in _refs(value)]


def check_url(url: str, *, allow_http: bool = False, allow_private: bool = False) -> None:
    """Refuse a URL the gateway must not call (ValueError saying why). Plain http is for a loopback host
    (tests, a sidecar) or when the operator allows it (on-prem networks); anything else goes over https.
    A host that is, or resolves to, an internal address is refused unless `allow_private` (`shared.egress`)."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:  # e.g. a broken IPv6 literal
        raise ValueError(f"is not a URL: {exc}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"must be an https:// URL with a host, not {url[:100]!r}")
    if not _valid_host(host):
        raise ValueError(f"{host[:100]!r} is not a valid host name")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials: the request is signed instead")
    egress.check_scheme(parts.scheme, host, allow_http=allow_http, setting=HTTP_SETTING)
    egress.check_host(egress.request_host(url), allow_private=allow_private)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        host.encode("idna")  # refuses empty and over-long labels, as the request would later
        return True
    except UnicodeError:
        return False


def parse(data: Any, *, allow_http: bool = False, allow_private: bool = False) -> Tool:
    """A tool from a client's spec (a dict); pydantic's ValidationError says what is wrong. The URL's host
    is resolved: call it from a thread, not an event loop."""
    return Tool.model_validate(data, context={ALLOW_HTTP: allow_http, ALLOW_PRIVATE: allow_private})


# ---- storage --------------------------------------------------------------------------------------------


def _load(raw: bytes | str) -> Tool:
    # Stored tools passed the URL check when they were put; the settings may have changed since. Loading
    # resolves no names: `call` applies the egress policy as it is when the tool is called.
    return Tool.model_validate_json(raw, context={ALLOW_HTTP: True, ALLOW_PRIVATE: True})


def put(conn: redis.Redis, tenant: str, tool: Tool, *, max_tools: int = DEFAULT_MAX_TOOLS) -> Tool:
    """Store a tool (the same name replaces it, keeping its creation time); TooManyTools when a new name
    would take the tenant past `max_tools`."""
    key = keys.tools(tenant)

    def write(pipe: redis.client.Pipeline) -> Tool:
        old = pipe.hget(key, tool.name)
        if old is None and pipe.hlen(key) >= max_tools:
            raise TooManyTools(f"a tenant has at most {max_tools} tools; delete one first")
        now = time.time()
        stored = tool.model_copy(update={"created_at": _load(old).created_at if old is not None else now,
                                         "updated_at": now})
        pipe.multi()
        pipe.hset(key, tool.name, stored.model_dump_json())
        return stored

    return transaction(conn, write, key)


def get(conn: redis.Redis, tenant: str, name: str) -> Tool | None:
    raw = conn.hget(keys.tools(tenant), name)
    return _load(raw) if raw is not None else None


def list_tools(conn: redis.Redis, tenant: str) -> list[Tool]:
    """The tenant's tools, by name."""
    return sorted((_load(v) for v in conn.hgetall(keys.tools(tenant)).values()), key=lambda t: t.name)


def delete(conn: redis.Redis, tenant: str, name: str) -> bool:
    return bool(conn.hdel(keys.tools(tenant), name))


# ---- offering and checking --------------------------------------------------------------------------------


def openai_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    """The tools as OpenAI chat completions' `tools=` takes them."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}} for t in tools]


def check_arguments(tool: Tool, arguments: Any) -> list[str]:
    """What is wrong with the model's (or a tester's) arguments, one line each ("$.order_id: ..."); empty
    when they are valid. Formats (email, date, ...) are checked too."""
    return schema_errors(tool.parameters, arguments)


def schema_errors(schema: dict[str, Any], arguments: Any) -> list[str]:
    """`check_arguments` for any parameters schema (the LLM stage's built-in actions have no `Tool`)."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    try:
        errors = sorted(validator.iter_errors(arguments), key=lambda e: [str(p) for p in e.absolute_path])
    except Unresolvable as exc:  # a local $ref to nowhere: the tenant's schema is broken, not the arguments
        return [f"$: the tool's parameters schema has a broken reference: {exc}"]
    return [f"{e.json_path}: {e.message}" for e in errors]


# ---- calling ----------------------------------------------------------------------------------------------


def request_body(tool: Tool, arguments: dict[str, Any], call_id: str, tenant: str) -> bytes:
    return json.dumps({"tool": tool.name, "arguments": arguments, "call_id": call_id, "tenant": tenant},
                      ensure_ascii=False, allow_nan=False).encode()


def request_headers(tool: Tool, body: bytes, secret: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", HEADER_TOOL: tool.name}
    if secret:
        headers.update(signing.header(secret, body))
    return headers


def call(tool: Tool, arguments: dict[str, Any], *, secret: str | None, call_id: str, tenant: str,
         timeout_s: float | None = None, allow_private: bool = False) -> ToolOutcome:
    """POST the arguments to the tool's endpoint, signed with `secret` when given, and say what came back.
    Never raises; never takes longer than `timeout_s` (default: the tool's) in total, retry included.
    `allow_private` is the `egress_allow_private` setting: without it, an endpoint that now is, or resolves
    to, an internal address is not called (a failed outcome saying so)."""
    budget = timeout_s or tool.timeout_s
    start = time.monotonic()
    deadline = start + budget
    outcome: list[ToolOutcome] = []
    # httpx's timeouts bound each step (connect, each read), not the whole request: the request runs in a
    # thread of its own and the line waits for it no longer than the budget.
    worker = threading.Thread(target=lambda: outcome.append(_guarded(tool, arguments, secret, call_id, tenant,
                                                                     deadline, allow_private)),
                              name=f"tool-{tool.name}", daemon=True)
    worker.start()
    worker.join(budget)
    elapsed = round(time.monotonic() - start, 3)
    if not outcome:
        return ToolOutcome(ok=False, error=f"timeout: no answer within {budget:g} s", elapsed_s=elapsed)
    return outcome[0].model_copy(update={"elapsed_s": elapsed})


def _guarded(tool: Tool, arguments: dict[str, Any], secret: str | None, call_id: str, tenant: str,
             deadline: float, allow_private: bool) -> ToolOutcome:
    try:
        return _attempts(tool, arguments, secret, call_id, tenant, deadline, allow_private)
    except Exception as exc:  # the caller is promised an outcome, whatever the URL or the endpoint does
        return ToolOutcome(ok=False, error=f"the call failed: {type(exc).__name__}: {exc}")


def _attempts(tool: Tool, arguments: dict[str, Any], secret: str | None, call_id: str, tenant: str,
              deadline: float, allow_private: bool) -> ToolOutcome:
    """One request, and one retry when the endpoint asks for it briefly and time allows."""
    try:
        body = request_body(tool, arguments, call_id, tenant)
    except (TypeError, ValueError) as exc:
        return ToolOutcome(ok=False, error=f"the arguments are not JSON: {exc}")
    try:
        # Again at each call: the name may resolve elsewhere than when the tool was registered. Once, not per
        # attempt: a retry a second later connects where the first did, and the caller waits on every lookup.
        client = egress.client(tool.url, allow_private=allow_private)
    except egress.Blocked as exc:
        return ToolOutcome(ok=False, error=f"refused: {exc}")
    with client:
        outcome, wait = _attempt(client, tool, body, secret, deadline)
        if wait is not None and time.monotonic() + wait < deadline:
            time.sleep(wait)
            outcome, _ = _attempt(client, tool, body, secret, deadline)
    return outcome


def _attempt(client: httpx.Client, tool: Tool, body: bytes, secret: str | None,
             deadline: float) -> tuple[ToolOutcome, float | None]:
    """The outcome of one POST, and the wait before a retry when one is worth it (else None)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return ToolOutcome(ok=False, error="timeout: no time left for the request"), None
    # Signed per attempt: a retry carries a fresh timestamp.
    headers = request_headers(tool, body, secret)
    try:
        with client.stream("POST", tool.url, content=body, headers=headers, timeout=remaining) as response:
            raw, cut = _read_capped(response, deadline)
    except httpx.TimeoutException:
        return ToolOutcome(ok=False, error="timeout: the endpoint did not answer in time"), None
    except httpx.HTTPError as exc:
        return ToolOutcome(ok=False, error=f"connection failed: {type(exc).__name__}: {exc}"), None
    outcome = _judge(response.status_code, raw, cut)
    return outcome, _retry_wait(response)


def _read_capped(response: httpx.Response, deadline: float) -> tuple[bytes, bool]:
    """At most MAX_BODY_BYTES of the body, and whether there was more (the rest is never read)."""
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            return bytes(data[:MAX_BODY_BYTES]), True
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the body did not arrive in time")
    return bytes(data), False


def _judge(status: int, raw: bytes, cut: bool) -> ToolOutcome:
    text = raw.decode("utf-8", errors="replace")
    if cut:
        return ToolOutcome(ok=False, status=status, result=_short(text),
                           error=f"the response is larger than {MAX_BODY_BYTES // 1024} KB")
    parsed, is_json = _json(text)
    if not 200 <= status < 300:
        return ToolOutcome(ok=False, status=status, result=parsed if is_json else _short(text),
                           error=f"the endpoint answered HTTP {status}")
    if not raw.strip():
        return ToolOutcome(ok=True, status=status, result=None)  # done, nothing to say (e.g. 204)
    if not is_json:
        return ToolOutcome(ok=False, status=status, result=_short(text), error="the response is not JSON")
    return ToolOutcome(ok=True, status=status, result=parsed)


def _json(text: str) -> tuple[Any, bool]:
    try:
        return json.loads(text), True
    except ValueError:
        return None, False


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…"


def _retry_wait(response: httpx.Response) -> float | None:
    """Seconds to wait before the one retry: only for 429/503 asking for at most MAX_RETRY_AFTER_S."""
    if response.status_code not in (429, 503):
        return None
    try:
        wait = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP-date: too far off for a caller on the line
    return wait if 0 <= wait <= MAX_RETRY_AFTER_S else None
