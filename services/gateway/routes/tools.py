"""The tenant's custom tools: register (or replace), list, read, delete, and test-call one.

The LLM stage offers a tenant's tools to the model and calls them (`shared.tools`); these routes only
manage them, plus `/test`, which makes the same call the model would, so a tenant can check an endpoint.
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from pydantic import Field, ValidationError

from services.gateway.deps import RedisDep, SettingsDep, TenantDep
from services.gateway.errors import ApiError
from services.gateway.validate import StrictBody
from shared import tools, webhooks

router = APIRouter(tags=["tools"])

# Test calls wait on tenants' endpoints for up to 30 s each: they get threads of their own, a few at a
# time, so a burst of them cannot take the threads every other synchronous route runs on.
TEST_CALL_SLOTS = 8
TEST_CALLS = anyio.CapacityLimiter(TEST_CALL_SLOTS)
# The error code of a refused spec, by the field that was wrong.
FIELD_CODES = {"name": "invalid_tool_name", "parameters": "invalid_parameters", "url": "invalid_tool_url"}


class TryCall(StrictBody):
    arguments: Any = Field(default_factory=dict, description="The arguments, as the model would give them.")


def _spec_schema() -> dict[str, Any]:
    schema = tools.Tool.model_json_schema()
    for stamp in ("created_at", "updated_at"):
        schema["properties"].pop(stamp, None)
    return schema


def _refusal(exc: ValidationError) -> ApiError:
    """422 naming every wrong field; the code says which kind of mistake came first."""
    errors = exc.errors()
    first = errors[0]
    field = str(first["loc"][0]) if first.get("loc") else ""
    code = FIELD_CODES.get(field, "invalid_tool")
    if isinstance((first.get("ctx") or {}).get("error"), tools.ReservedName):
        code = "reserved_tool_name"
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()))
        message = str(err["msg"]).removeprefix("Value error, ")
        parts.append("missing field '" + where + "'" if err["type"] == "missing" else f"{where}: {message}")
    return ApiError(422, code, "; ".join(parts))


def _spec(raw: bytes) -> Any:
    if not raw.strip():
        raise ApiError(400, "empty_request", "send the tool as JSON: {name, description, parameters, url}")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from exc


def _owned(conn: RedisDep, tenant: str, name: str) -> tools.Tool:
    tool = tools.get(conn, tenant, name) if tools.NAME.match(name) else None
    if tool is None:
        raise ApiError(404, "tool_not_found", f"no tool named {name!r}")
    return tool


def _json(tool: tools.Tool, status: int = 200) -> Response:
    return Response(tool.model_dump_json(), status_code=status, media_type="application/json")


@router.post("/v1/tools", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": _spec_schema()}}}})
async def put_tool(request: Request, conn: RedisDep, settings: SettingsDep, tenant: TenantDep) -> Response:
    """Register a tool, or replace the one with the same name; 201 with the tool as stored."""
    data = _spec(await request.body())
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_tool", "the tool must be a JSON object: {name, description, parameters, url}")
    data = {k: v for k, v in data.items() if k not in ("created_at", "updated_at")}  # the gateway stamps these
    # The URL's host is resolved (`shared.egress`): in a thread, so a slow resolver holds no event loop.
    parse = functools.partial(tools.parse, data, allow_http=settings.tools_allow_http,
                              allow_private=settings.egress_allow_private)
    try:
        tool = await anyio.to_thread.run_sync(parse)
    except ValidationError as exc:
        raise _refusal(exc) from exc
    try:
        stored = tools.put(conn, tenant, tool, max_tools=settings.tools_max_per_tenant)
    except tools.TooManyTools as exc:
        raise ApiError(409, "too_many_tools", str(exc)) from exc
    return _json(stored, 201)


@router.get("/v1/tools")
def list_tools(conn: RedisDep, tenant: TenantDep) -> dict[str, Any]:
    return {"tools": [t.model_dump(mode="json") for t in tools.list_tools(conn, tenant)]}


@router.get("/v1/tools/{name}")
def get_tool(name: str, conn: RedisDep, tenant: TenantDep) -> Response:
    return _json(_owned(conn, tenant, name))


@router.delete("/v1/tools/{name}", status_code=204)
def delete_tool(name: str, conn: RedisDep, tenant: TenantDep) -> Response:
    """Delete a tool: the model is no longer offered it from the next turn on."""
    if not (tools.NAME.match(name) and tools.delete(conn, tenant, name)):
        raise ApiError(404, "tool_not_found", f"no tool named {name!r}")
    return Response(status_code=204)


@router.post("/v1/tools/{name}/test")
async def try_tool(name: str, body: TryCall, conn: RedisDep, settings: SettingsDep,
                   tenant: TenantDep) -> dict[str, Any]:
    """Check the arguments against the tool's schema (422 with every error), then call the endpoint for
    real, as the model would, and return what came back: {ok, status, result, error, elapsed_s}."""
    tool = _owned(conn, tenant, name)
    errors = tools.check_arguments(tool, body.arguments)
    if errors:
        raise ApiError(422, "invalid_arguments", "the arguments do not match the tool's parameters: "
                       + "; ".join(errors))
    if TEST_CALLS.available_tokens < 1:
        raise ApiError(429, "tool_tests_busy", f"{TEST_CALL_SLOTS} tool tests are already running; retry in a "
                       "few seconds", {"Retry-After": "2"})
    endpoint = webhooks.get_endpoint(conn, tenant)  # signed as the LLM stage signs: with the webhook secret
    call = functools.partial(tools.call, tool, body.arguments, secret=endpoint.secret if endpoint else None,
                             call_id=f"test_{uuid.uuid4().hex}", tenant=tenant,
                             allow_private=settings.egress_allow_private)
    outcome = await anyio.to_thread.run_sync(call, limiter=TEST_CALLS)
    return outcome.model_dump(mode="json")
