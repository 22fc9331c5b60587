"""Twilio's signature on a Media Streams WebSocket upgrade (and on its `<Connect action>` request).

`X-Twilio-Signature` is the base64 HMAC-SHA1, keyed with the account's auth token, of the URL Twilio
opened; an upgrade is a GET, so no form parameters are appended. Behind a TLS proxy the gateway sees
ws:// where Twilio opened wss://, and the port may be written or not, so every such spelling of the URL
(or the configured `twilio_stream_url`) is tried, as Twilio's own validators do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit, urlunsplit

from starlette.datastructures import URL

DEFAULT_PORTS = {"wss": 443, "https": 443, "ws": 80, "http": 80}


def sign(token: str, url: str, params: dict[str, str] | None = None) -> str:
    """A POST's form parameters are signed too: each name and value, sorted by name, after the URL."""
    signed = url + "".join(f"{k}{v}" for k, v in sorted((params or {}).items()))
    return base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def _with_and_without_port(url: str) -> list[str]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme)
    bare = urlunsplit(parts._replace(netloc=host))
    return [bare, urlunsplit(parts._replace(netloc=f"{host}:{port}"))] if port else [bare]


def candidates(request_url: URL, host: str | None, configured: str | None,
               schemes: tuple[str, str] = ("wss", "ws")) -> list[str]:
    """The spellings of the URL Twilio may have signed (`schemes`: https, http for a webhook request)."""
    query = f"?{request_url.query}" if request_url.query else ""
    bases = [configured.rstrip("?")] if configured else []
    netloc = host or request_url.netloc
    bases += [f"{scheme}://{netloc}{request_url.path}" for scheme in schemes]
    urls: list[str] = []
    for base in bases:
        for url in _with_and_without_port(base + query):
            if url not in urls:
                urls.append(url)
    return urls


def valid(token: str, signature: str, urls: list[str], params: dict[str, str] | None = None) -> bool:
    return any(hmac.compare_digest(sign(token, url, params), signature) for url in urls)
