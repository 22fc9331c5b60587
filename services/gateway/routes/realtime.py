"""Live calls: GET /v1/realtime (OpenAI Realtime protocol) and GET /v1/telephony/twilio (Twilio Media Streams)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse

from services.gateway import auth
from services.gateway.calls import openai_realtime, twilio_signature
from services.gateway.calls import twilio as twilio_adapter
from services.gateway.calls.session import CallSession
from services.gateway.errors import ApiError

router = APIRouter(tags=["calls"])
KEY_PROTOCOL = "openai-insecure-api-key."


def offered_protocols(ws: WebSocket) -> list[str]:
    raw = ws.headers.get("sec-websocket-protocol") or ""
    return [p.strip() for p in raw.split(",") if p.strip()]


def credentials(ws: WebSocket) -> str | None:
    """The Authorization header, or a browser's key sent as the `openai-insecure-api-key.<key>` subprotocol."""
    for p in offered_protocols(ws):
        if p.startswith(KEY_PROTOCOL):
            return f"Bearer {p[len(KEY_PROTOCOL):]}"
    if ws.query_params.get("api_key"):
        return f"Bearer {ws.query_params['api_key']}"
    return ws.headers.get("authorization")


async def open_call(ws: WebSocket, transport: str, tenant: str | None = None) -> CallSession | None:
    """Authenticate (unless `tenant` is known already) and accept the socket; None (the socket refused with
    the reason) for a bad key."""
    state = ws.app.state
    if tenant is None:
        try:
            tenant = await asyncio.to_thread(auth.resolve, state.redis, state.settings, credentials(ws))
        except ApiError as exc:
            await ws.close(code=1008, reason=f"{exc.code}: {exc.message}"[:120])
            return None
    offered = offered_protocols(ws)
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    return CallSession(conn=state.redis, aconn=state.aredis, settings=state.settings, tenant=tenant,
                       send=_unset, transport=transport, model=ws.query_params.get("model") or "voicequeue-realtime")


async def _unset(_event: dict[str, object]) -> None:
    raise RuntimeError("the adapter sets the session's send")


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket) -> None:
    session = await open_call(ws, "realtime")
    if session is not None:
        await openai_realtime.serve(ws, session)


@router.websocket("/v1/telephony/twilio")
async def twilio(ws: WebSocket) -> None:
    """Twilio Media Streams (`<Connect><Stream url="wss://…/v1/telephony/twilio">`). With `twilio_auth_token`
    set, Twilio's signature authenticates the upgrade and the call is `twilio_tenant`'s; without it, an API
    key does (the Authorization header, or `?api_key=`, for a test rig: Twilio sends neither)."""
    settings = ws.app.state.settings
    if settings.twilio_auth_token is None:
        session = await open_call(ws, "twilio")
    else:
        refusal = twilio_refusal(ws, settings.twilio_auth_token.get_secret_value(), settings.twilio_stream_url)
        if refusal is not None:
            await refuse(ws, 403, *refusal)
            return
        session = await open_call(ws, "twilio", tenant=settings.twilio_tenant)
    if session is not None:
        await twilio_adapter.serve(ws, session)


def twilio_refusal(ws: WebSocket, token: str, configured_url: str | None) -> tuple[str, str] | None:
    """(code, message) when the upgrade is not signed by Twilio with `token`; None when it is."""
    signature = ws.headers.get("x-twilio-signature")
    if not signature:
        return ("missing_twilio_signature", "this endpoint accepts only Twilio Media Streams signed with the "
                "account's auth token, and the upgrade has no X-Twilio-Signature header")
    urls = twilio_signature.candidates(ws.url, ws.headers.get("host"), configured_url)
    if not twilio_signature.valid(token, signature, urls):
        return ("invalid_twilio_signature", "X-Twilio-Signature does not match this stream URL signed with the "
                "configured auth token (check VQ_TWILIO_AUTH_TOKEN, and VQ_TWILIO_STREAM_URL behind a proxy)")
    return None


async def refuse(ws: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse an upgrade with an HTTP error and a JSON reason where the server can send one (the ASGI
    WebSocket denial extension), else with a close reason."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse({"error": {"code": code, "message": message}}, status))
    else:
        await ws.close(code=1008, reason=f"{code}: {message}"[:120])
