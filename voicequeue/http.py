"""The HTTP client the CLI talks to the gateway with: the tenant's API key, and patience on 429."""

from __future__ import annotations

import sys
import time

import httpx

MAX_WAIT_S = 60.0


class PatientTransport(httpx.HTTPTransport):
    """Waits out 429s (rate limit, queue backlog) for as long as the gateway's Retry-After asks,
    so a batch of hundreds of calls finishes instead of failing halfway through its uploads."""

    def __init__(self, attempts: int = 30) -> None:
        super().__init__()
        self.attempts = attempts

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(self.attempts - 1):
            response = super().handle_request(request)
            if response.status_code != 429:
                return response
            response.read()
            response.close()
            time.sleep(retry_after(response))
        return super().handle_request(request)


def retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "1")
    return min(MAX_WAIT_S, max(0.5, float(value))) if value.replace(".", "", 1).isdigit() else 1.0


def client(url: str, api_key: str | None, timeout_s: float) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, timeout=timeout_s, headers=headers, transport=PatientTransport())


def error_text(response: httpx.Response) -> str:
    """The gateway's reason for a refusal (`{"error": {"message"}}`), else the status."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def delete_each(client: httpx.Client, route: str, names: list[str], command: str) -> int:
    """DELETE `route/<name>` for each name, saying what happened to each; 1 if any failed."""
    code = 0
    for name in names:
        response = client.delete(f"{route}/{name}")
        if response.status_code == 204:
            print(f"removed {name}")
        else:
            print(f"voicequeue {command}: {name}: {error_text(response)}", file=sys.stderr)
            code = 1
    return code
