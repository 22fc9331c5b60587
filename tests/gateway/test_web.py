"""The page's files are served, and every new route is in the OpenAPI spec."""

from __future__ import annotations

import httpx


def test_page_and_its_files(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js">' in page.text and 'id="record"' in page.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "text/javascript" in js.headers["content-type"]
    assert "EventSource" in js.text and "MediaRecorder" in js.text
    assert client.get("/static/app.css").status_code == 200
    for bad in ("/static/nope.js", "/static/..%2Fapp.py", "/static/../routes/web.py"):
        assert client.get(bad).status_code == 404, bad


def test_openapi_lists_the_new_routes(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/chat", "/v1/audio/speech", "/v1/sessions/{session_id}", "/v1/jobs/{job_id}/chunks/{seq}",
                 "/v1/jobs/{job_id}/audio/stream"):
        assert path in paths, path
    assert "/" not in paths
