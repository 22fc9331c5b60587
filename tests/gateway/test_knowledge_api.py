"""/v1/knowledge/documents through a real gateway on a real Redis, with no worker running: documents are
stored and their indexing queued on llm:batch (nothing is indexed in the request), bad input gets a 4xx
with a reason and stores nothing, and one tenant's documents are invisible to another."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.gateway import keystore
from shared import keys, knowledge, queues
from tests.conftest import running_redis
from tests.llm.knowledge.kb import FIXTURE
from tests.stack import VENV_BIN, free_port, wait_http


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, redis.Redis, dict[str, str]]]:
    """A gateway alone on its own Redis (auth on, two tenants), with a 1 MB document limit."""
    import os

    with running_redis(tmp_path_factory.mktemp("kb-api-redis")) as url:
        conn = redis.Redis.from_url(url)
        keys_ = {"a": keystore.create(conn, "shop-a")[0], "b": keystore.create(conn, "shop-b")[0]}
        port = free_port()
        log = (tmp_path_factory.mktemp("kb-api") / "gateway.log").open("wb")
        env = {**os.environ, "VQ_REDIS_URL": url, "VQ_GATEWAY_PORT": str(port), "VQ_KNOWLEDGE_MAX_DOCUMENT_MB": "1"}
        proc = subprocess.Popen([str(VENV_BIN / "voicequeue"), "gateway"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
            yield f"http://127.0.0.1:{port}", conn, keys_
        finally:
            proc.terminate()
            proc.wait(15)
            conn.close()


def client(gateway: tuple[str, redis.Redis, dict[str, str]], tenant: str = "a") -> httpx.Client:
    return httpx.Client(base_url=gateway[0], headers={"Authorization": f"Bearer {gateway[2][tenant]}"}, timeout=30)


def queued_index_jobs(conn: redis.Redis) -> int:
    return int(conn.llen(queues.rq_key(knowledge.INDEX_QUEUE)))


def test_add_list_get_delete(gateway: tuple[str, redis.Redis, dict[str, str]]) -> None:
    conn = gateway[1]
    before = queued_index_jobs(conn)
    with client(gateway) as c:
        with (FIXTURE / "returns.md").open("rb") as f:
            r = c.post("/v1/knowledge/documents", files={"file": ("returns.md", f, "text/markdown")})
        assert r.status_code == 202, r.text
        doc = r.json()
        assert doc["id"] == "returns.md" and doc["title"] == "returns.md" and doc["kind"] == "markdown"
        assert doc["status"] == "indexing" and doc["generation"] == 1
        r = c.post("/v1/knowledge/documents", json={"title": "Store notes", "text": "We sell oak tables."})
        assert r.status_code == 202 and r.json()["id"] == "store-notes" and r.json()["kind"] == "text"
        assert queued_index_jobs(conn) == before + 2  # indexing is a job, not done in the request
        listed = c.get("/v1/knowledge/documents").json()["documents"]
        assert [d["id"] for d in listed] == ["returns.md", "store-notes"]
        got = c.get("/v1/knowledge/documents/store-notes").json()
        assert got["status"] == "indexing" and got["bytes"] == len(b"We sell oak tables.")
        assert c.get("/v1/knowledge/documents/store-notes/passages").json() == {"id": "store-notes",
                                                                                "passages": []}
        # The same id again is a new generation of the same document, not a second one.
        r = c.post("/v1/knowledge/documents", json={"title": "Store notes", "text": "We sell walnut shelves."})
        assert r.json()["generation"] == 2
        assert len(c.get("/v1/knowledge/documents").json()["documents"]) == 2
        assert c.delete("/v1/knowledge/documents/store-notes").status_code == 204
        assert c.get("/v1/knowledge/documents/store-notes").status_code == 404
        assert c.delete("/v1/knowledge/documents/store-notes").status_code == 404
    assert not conn.exists(keys.knowledge_source("shop-a", "store-notes"))
    assert conn.ttl(keys.knowledge_docs("shop-a")) == -1  # kept until deleted


def test_other_tenants_documents_are_not_found(gateway: tuple[str, redis.Redis, dict[str, str]]) -> None:
    with client(gateway, "a") as a, client(gateway, "b") as b:
        assert a.post("/v1/knowledge/documents", json={"id": "secret", "title": "A's doc", "text": "x y"}
                      ).status_code == 202
        unknown = b.get("/v1/knowledge/documents/no-such-doc")
        other = b.get("/v1/knowledge/documents/secret")
        assert other.status_code == unknown.status_code == 404
        assert other.json()["error"]["code"] == "document_not_found"
        assert b.delete("/v1/knowledge/documents/secret").status_code == 404
        assert "secret" not in [d["id"] for d in b.get("/v1/knowledge/documents").json()["documents"]]
        assert b.get("/v1/knowledge/documents/secret/passages").status_code == 404
        assert a.get("/v1/knowledge/documents/secret").status_code == 200  # b's delete did nothing
        assert httpx.get(f"{gateway[0]}/v1/knowledge/documents").status_code == 401


BAD: dict[str, tuple[dict[str, Any], int, str]] = {
    "empty file": ({"files": {"file": ("a.md", b"", "text/markdown")}}, 400, "empty_document"),
    "blank text file": ({"files": {"file": ("a.txt", b"  \n\n ", "text/plain")}}, 400, "empty_document"),
    "unsupported type": ({"files": {"file": ("a.docx", b"PK\x03\x04", "application/octet-stream")}}, 415,
                         "unsupported_document_type"),
    "not utf-8": ({"files": {"file": ("a.txt", "营业时间".encode("gbk"), "text/plain")}}, 400, "not_utf8"),
    "fake pdf": ({"files": {"file": ("a.pdf", b"hello there", "application/pdf")}}, 400, "invalid_pdf"),
    "no file field": ({"files": {"other": ("a.md", b"# hi", "text/markdown")}}, 400, "no_file"),
    "oversized": ({"files": {"file": ("big.txt", b"word " * 300_000, "text/plain")}}, 413, "document_too_large"),
    "malformed json": ({"content": b'{"title": "x", ', "headers": {"content-type": "application/json"}}, 400,
                       "malformed_json"),
    "missing text": ({"json": {"title": "x"}}, 422, "invalid_request"),
    "empty json text": ({"json": {"title": "x", "text": "   "}}, 400, "empty_document"),
    "missing title": ({"json": {"title": " ", "text": "hello"}}, 400, "missing_title"),
    "bad id": ({"json": {"id": "../etc/passwd", "title": "x", "text": "hello"}}, 400, "invalid_document_id"),
    "bad format": ({"json": {"title": "x", "text": "hello", "format": "docx"}}, 400, "unsupported_document_type"),
    "empty body": ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty_request"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_documents_are_refused(gateway: tuple[str, redis.Redis, dict[str, str]], case: str) -> None:
    request, status, code = BAD[case]
    with client(gateway, "b") as c:
        before = len(c.get("/v1/knowledge/documents").json()["documents"])
        r = c.post("/v1/knowledge/documents", **request)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
        assert len(c.get("/v1/knowledge/documents").json()["documents"]) == before  # nothing stored


def test_pdf_upload_is_accepted(gateway: tuple[str, redis.Redis, dict[str, str]], tmp_path: Path) -> None:
    from tests.llm.knowledge.test_documents import pdf_bytes

    with client(gateway, "b") as c:
        r = c.post("/v1/knowledge/documents", files={"file": ("warranty.pdf", pdf_bytes(["Warranty: 7 years."]),
                                                              "application/pdf")}, data={"title": "Warranty"})
        assert r.status_code == 202 and r.json()["kind"] == "pdf" and r.json()["id"] == "warranty"


def test_web_page_has_the_knowledge_tab(gateway: tuple[str, redis.Redis, dict[str, str]]) -> None:
    page = httpx.get(f"{gateway[0]}/").text
    assert 'id="knowledge-box"' in page and '<script src="/static/knowledge.js">' in page
    js = httpx.get(f"{gateway[0]}/static/knowledge.js")
    assert js.status_code == 200 and "window.showKnowledge" in js.text
