"""API errors: every refusal is a 4xx with a machine code and a message saying what was wrong."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def body(code: str, message: str) -> dict[str, object]:
    # "error" mirrors OpenAI's shape so SDK clients surface the message; "detail" is FastAPI's.
    return {"error": {"code": code, "message": message, "type": "invalid_request_error"}, "detail": message}


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        if err.get("type") == "missing":
            parts.append(f"missing field '{loc}'")
        else:
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def _malformed_json(exc: RequestValidationError) -> str | None:
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            where = err.get("loc", ("body", "?"))[-1]
            reason = (err.get("ctx") or {}).get("error", "not JSON")
            return f"the body is not valid JSON: {reason} at character {where}"
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        broken = _malformed_json(exc)
        if broken:
            return JSONResponse(body("malformed_json", broken), status_code=400)
        return JSONResponse(body("invalid_request", _describe(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "malformed_request" if exc.status_code == 400 else f"http_{exc.status_code}"
        return JSONResponse(body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)
