"""The published OpenAPI document, made to say what the gateway really answers.

FastAPI documents only the success status and its own 422 shape. Clients and the
fuzzing tests read `/openapi.json` as a contract, so every refusal the gateway can
give is documented with the one error body it actually sends (errors.body).
"""

from __future__ import annotations

from typing import Any, cast

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

ERROR_REF = {"$ref": "#/components/schemas/Error"}

# Refusals any API route may give: bad input, auth, unknown ids, size, rate/backpressure.
API_ERRORS = {
    "400": "Malformed request (bad JSON, bad audio, bad option) — the message says what.",
    "401": "Missing, unknown or revoked API key (when auth is on).",
    "404": "Unknown id (or one belonging to another tenant).",
    "409": "The job is not in a state that has this (not ready, failed).",
    "410": "The audio has expired.",
    "413": "Body, file or batch larger than the configured limit.",
    "415": "Unsupported content type.",
    "422": "Well-formed but invalid values (too long, out of range, unknown field value).",
    "429": "Rate limit or queue backlog; retry after the Retry-After header's seconds.",
    "503": "Redis (the job store) unreachable: restarting, failing over or full (code 'redis_unavailable'). "
           "Nothing acknowledged is lost; retry after the Retry-After header's seconds.",
}
OPS_WITHOUT_API_ERRORS = {"/healthz", "/metrics", "/", "/readyz"}


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. 'file_too_large'.")
    message: str = Field(description="What was wrong, for people.")
    type: str = Field(description="Error family (OpenAI-compatible shape).")


class Error(BaseModel):
    error: ErrorDetail
    detail: str = Field(description="The message again, where FastAPI clients look for it.")


def _hoist_defs(node: Any, found: dict[str, Any]) -> Any:
    """Move inline pydantic `$defs` into components: a `#/$defs/X` ref only resolves at a document root."""
    if isinstance(node, dict):
        found.update(node.pop("$defs", {}))
        return {k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" and isinstance(v, str)
                    else _hoist_defs(v, found)) for k, v in node.items()}
    if isinstance(node, list):
        return [_hoist_defs(v, found) for v in node]
    return node


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def _document_errors(path: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    if path == "/readyz":
        responses.setdefault("503", {"description": "Redis down or a queue without workers (report in body).",
                                     "content": {"application/json": {"schema": {"type": "object"}}}})
    if path == "/metrics":
        responses["200"] = {"description": "Prometheus text exposition.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}}
    if path in OPS_WITHOUT_API_ERRORS:
        return
    for status, description in API_ERRORS.items():
        responses[status] = _error_response(description)  # replaces FastAPI's HTTPValidationError 422
    if "wait" in str(operation.get("parameters", "")) or path in ("/v1/audio/speech", "/v1/audio/transcriptions"):
        responses["504"] = _error_response("The job did not finish within the configured wait.")


def build(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    defs: dict[str, Any] = {}
    schema = cast(dict[str, Any], _hoist_defs(schema, defs))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(_hoist_defs(defs, {}))
    components["ErrorDetail"] = ErrorDetail.model_json_schema()
    components["Error"] = _hoist_defs(Error.model_json_schema(ref_template="#/components/schemas/{model}"), {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            _document_errors(path, operation)
    app.openapi_schema = schema
    return schema


def install(app: FastAPI) -> None:
    app.openapi = lambda: build(app)  # type: ignore[method-assign]
