"""The web page at `/`: talk, upload or type to the bot (static HTML + plain JS, no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from services.gateway.errors import ApiError

router = APIRouter(tags=["web"], include_in_schema=False)

STATIC = Path(__file__).resolve().parents[1] / "static"
# Served by name from a fixed list: nothing outside the page's own files can be asked for.
FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css", "call.js": "text/javascript",
         "knowledge.js": "text/javascript"}


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    if name not in FILES:
        raise ApiError(404, "not_found", f"no static file {name!r}")
    return FileResponse(STATIC / name, media_type=FILES[name], headers={"Cache-Control": "no-cache"})
