"""POST /v1/telephony/twilio/after: Twilio's `<Connect action>` request once a Media Stream has closed.

The TwiML that starts a call is `<Connect action="https://HOST/v1/telephony/twilio/after"><Stream
url="wss://HOST/v1/telephony/twilio"/></Connect>`. When the stream closes, Twilio asks this URL what the call
does next: a call the bot transferred (`transfer_to_human`) is dialled to `call_transfer_to` (`<Dial>` a
number or SIP URI, `<Enqueue>` for `queue:<name>`); any other call is hung up.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from fastapi import APIRouter, Request, Response

from services.gateway.calls import twilio_signature
from services.gateway.deps import RedisDep, SettingsDep
from services.gateway.errors import ApiError
from shared import keys

router = APIRouter(tags=["calls"])


def twiml(target: str | None) -> str:
    if not target:
        return "<Response><Hangup/></Response>"
    if target.startswith("queue:"):
        return f"<Response><Enqueue>{escape(target.removeprefix('queue:'))}</Enqueue></Response>"
    if target.startswith("sip:"):
        return f"<Response><Dial><Sip>{escape(target)}</Sip></Dial></Response>"
    return f"<Response><Dial>{escape(target)}</Dial></Response>"


@router.post("/v1/telephony/twilio/after", include_in_schema=False)
async def after(request: Request, conn: RedisDep, settings: SettingsDep) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    if settings.twilio_auth_token is not None:
        urls = twilio_signature.candidates(request.url, request.headers.get("host"), None, ("https", "http"))
        signature = request.headers.get("x-twilio-signature") or ""
        if not twilio_signature.valid(settings.twilio_auth_token.get_secret_value(), signature, urls, form):
            raise ApiError(403, "invalid_twilio_signature", "this request is not signed by Twilio with the "
                           "configured auth token (VQ_TWILIO_AUTH_TOKEN)")
    call_sid = form.get("CallSid", "")
    if not call_sid:
        raise ApiError(400, "missing_call_sid", "Twilio's request has no CallSid form field")
    target = conn.getdel(keys.twilio_transfer(call_sid))
    return Response(twiml(target.decode() if isinstance(target, bytes) else target), media_type="application/xml")
