"""The OpenAI Realtime adapter: JSON events over a WebSocket ⇄ `CallSession`."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from services.gateway.calls import protocol
from services.gateway.calls.protocol import ProtocolError
from services.gateway.calls.session import CallSession

log = logging.getLogger(__name__)


async def serve(ws: WebSocket, session: CallSession) -> None:
    lock = asyncio.Lock()

    async def send(event: dict[str, Any]) -> None:
        if event["type"].startswith("x."):
            return  # internal hints for telephony adapters
        async with lock:
            await ws.send_text(json.dumps(event, ensure_ascii=False))

    session._send = send
    if not await session.start():
        await send(protocol.error("call_limit_reached", "this API key's tenant has reached its concurrent call limit",
                                  type_="rate_limit_error"))
        await ws.close(code=1008, reason="concurrent call limit reached")
        return
    await session.emit("session.created", session=session.describe())
    await session.greet()

    async def close() -> None:
        await ws.close(code=session.close_code(), reason=session.end_reason or "")

    await session.run(_receive(ws, session), hung_up="client_closed", close=close)


async def _receive(ws: WebSocket, session: CallSession) -> None:
    while True:
        try:
            message = await ws.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text")
        if raw is None:
            await session.emit_error("invalid_event", "binary frames are not part of the protocol: send JSON text")
            continue
        try:
            await handle(session, protocol.parse(raw))
        except ProtocolError as exc:
            await session.emit_error(exc.code, exc.message, exc.event_id, exc.param)
        except Exception:  # a bug must not end the call: the client gets an error event and can go on
            log.exception("event failed", extra={"call_id": session.id})
            await session.emit_error("server_error", "the server failed to handle this event", None, None)


async def handle(session: CallSession, event: protocol.ClientEvent) -> None:
    data, type_ = event.data, event.type
    if type_ == "input_audio_buffer.append":
        await session.append_audio(event.audio, event.event_id)
    elif type_ == "session.update":
        session.update(data["session"], event.event_id)
        await session.emit("session.updated", session=session.describe())
    elif type_ == "input_audio_buffer.commit":
        await session.commit(event.event_id)
    elif type_ == "input_audio_buffer.clear":
        await session.clear()
    elif type_ == "conversation.item.create":
        role, text = protocol.message_text(data["item"])
        await session.add_item(role, text)
    elif type_ == "response.create":
        await session.create_response()
    elif type_ == "response.cancel":
        await session.cancel_response()
    elif type_ == "conversation.item.truncate":
        await session.truncate(data["item_id"], int(data["audio_end_ms"]), event.event_id)
