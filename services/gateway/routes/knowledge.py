"""The tenant's knowledge base: add (file or JSON text), list, read and delete documents.

Adding only checks and stores the document; splitting, embedding and indexing run as a job on the
llm workers' batch queue, and the document's `status` says when it answers (`indexing` → `ready`
or `failed` with a reason).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import Field, ValidationError
from starlette.datastructures import UploadFile as FormFile

from services.gateway.config import GatewaySettings
from services.gateway.deps import RedisDep, SettingsDep, TenantDep
from services.gateway.errors import ApiError
from services.gateway.validate import StrictBody
from shared import keys, knowledge

router = APIRouter(tags=["knowledge"])

SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".html": "html",
            ".htm": "html", ".pdf": "pdf"}
CONTENT_TYPES = {"text/markdown": "markdown", "text/x-markdown": "markdown", "text/plain": "text",
                 "text/html": "html", "application/xhtml+xml": "html", "application/pdf": "pdf"}
FORMATS = {"text": "text", "markdown": "markdown", "html": "html"}
MAX_TITLE = 200


class TextDocument(StrictBody):
    title: str = Field(description="The document's title (also its id when `id` is not given).")
    text: str = Field(description="The document's content.")
    id: str | None = Field(None, description="Document id, [A-Za-z0-9._-]{1,128}; the same id replaces it.")
    format: str = Field("text", description="How to read `text`: text, markdown or html.")


def _kind(filename: str | None, content_type: str | None) -> str:
    name = (filename or "").lower()
    suffix = name[name.rfind("."):] if "." in name else ""
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    kind = CONTENT_TYPES.get((content_type or "").split(";")[0].strip().lower())
    if kind is None:
        raise ApiError(415, "unsupported_document_type", f"cannot read {filename or 'the file'!r}: send Markdown "
                       "(.md), plain text (.txt), HTML (.html) or PDF (.pdf)")
    return kind


def _check(data: bytes, kind: str, settings: GatewaySettings) -> None:
    if len(data) > settings.knowledge_max_document_bytes:
        raise ApiError(413, "document_too_large",
                       f"the document is larger than the {settings.knowledge_max_document_mb:g} MB limit")
    if kind == "pdf":
        if not data.lstrip()[:5] == b"%PDF-":
            raise ApiError(400, "invalid_pdf", "the file is not a PDF (it does not start with %PDF-)")
        return
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "not_utf8", f"the document is not UTF-8 text (byte {exc.start})") from exc
    if not content.strip():
        raise ApiError(400, "empty_document", "the document has no text")


def _title(value: Any, fallback: str | None) -> str:
    title = (value if isinstance(value, str) else "").strip() or (fallback or "").strip()
    if not title:
        raise ApiError(400, "missing_title", "give the document a title (field 'title', or a file name)")
    if len(title) > MAX_TITLE:
        raise ApiError(400, "title_too_long", f"a title has at most {MAX_TITLE} characters")
    return title


def _doc_id(value: Any, title: str) -> str:
    doc_id = value.strip() if isinstance(value, str) and value.strip() else knowledge.doc_id_for(title)
    try:
        return knowledge.check_doc_id(doc_id)
    except ValueError as exc:
        raise ApiError(400, "invalid_document_id", str(exc)) from exc


async def _from_form(request: Request, settings: GatewaySettings) -> tuple[str, str, str, bytes, str | None]:
    form = await request.form(max_files=1)
    upload = form.get("file")
    if not isinstance(upload, FormFile):
        raise ApiError(400, "no_file", "send the document in the multipart field 'file'")
    data = await upload.read(settings.knowledge_max_document_bytes + 1)
    if not data:
        raise ApiError(400, "empty_document", "the uploaded file is empty")
    kind = _kind(upload.filename, upload.content_type)
    _check(data, kind, settings)
    name = upload.filename or None
    stem = name.rsplit("/", 1)[-1] if name else None
    title = _title(form.get("title"), stem)
    return _doc_id(form.get("id"), title), title, kind, data, name


async def _from_json(request: Request, settings: GatewaySettings) -> tuple[str, str, str, bytes, None]:
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "empty_request", "send JSON {title, text} or a multipart file")
    try:
        body = TextDocument.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {first.get('msg')}") from exc
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ApiError(422, "invalid_request", f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
                       ) from exc
    kind = FORMATS.get(body.format)
    if kind is None:
        raise ApiError(400, "unsupported_document_type", "format must be text, markdown or html")
    data = body.text.encode()
    _check(data, kind, settings)
    title = _title(body.title, None)
    return _doc_id(body.id, title), title, kind, data, None


UPLOAD_SCHEMA = {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "format": "binary"}, "title": {"type": "string"}, "id": {"type": "string"}}}


@router.post("/v1/knowledge/documents", status_code=202, openapi_extra={"requestBody": {"content": {
    "multipart/form-data": {"schema": UPLOAD_SCHEMA},
    "application/json": {"schema": TextDocument.model_json_schema()}}}})
async def add_document(request: Request, conn: RedisDep, settings: SettingsDep, tenant: TenantDep) -> Response:
    """Add or replace a document; 202 with its record (`status: indexing`) while it is indexed."""
    multipart = request.headers.get("content-type", "").lower().startswith("multipart/")
    doc_id, title, kind, data, filename = await (_from_form if multipart else _from_json)(request, settings)
    most = settings.knowledge_max_documents
    if knowledge.get(conn, tenant, doc_id) is None and knowledge.count(conn, tenant) >= most:
        raise ApiError(409, "too_many_documents", f"a knowledge base holds at most {most} documents; delete some")
    doc = knowledge.put(conn, settings, tenant, doc_id=doc_id, title=title, kind=kind, data=data, filename=filename)
    return Response(json.dumps(doc.wire(), ensure_ascii=False), status_code=202, media_type="application/json")


@router.get("/v1/knowledge/documents")
def list_documents(conn: RedisDep, tenant: TenantDep) -> dict[str, Any]:
    return {"documents": [d.wire() for d in knowledge.listing(conn, tenant)]}


def _owned(conn: RedisDep, tenant: str, doc_id: str) -> knowledge.Document:
    doc = knowledge.get(conn, tenant, doc_id) if knowledge.DOC_ID.match(doc_id) else None
    if doc is None:
        raise ApiError(404, "document_not_found", f"no document with id {doc_id!r}")
    return doc


@router.get("/v1/knowledge/documents/{doc_id}")
def get_document(doc_id: str, conn: RedisDep, tenant: TenantDep) -> dict[str, Any]:
    """The document's record: status (indexing, ready, failed with its reason), passages, sizes."""
    return _owned(conn, tenant, doc_id).wire()


@router.delete("/v1/knowledge/documents/{doc_id}", status_code=204)
def delete_document(doc_id: str, conn: RedisDep, tenant: TenantDep) -> Response:
    """Delete a document: its passages stop answering from the next question on."""
    _owned(conn, tenant, doc_id)
    if not knowledge.delete(conn, tenant, doc_id):
        raise ApiError(404, "document_not_found", f"no document with id {doc_id!r}")
    return Response(status_code=204)


@router.get("/v1/knowledge/documents/{doc_id}/passages")
def document_passages(doc_id: str, conn: RedisDep, tenant: TenantDep) -> dict[str, Any]:
    """The passages the document was split into, as answers quote them (empty until it is indexed)."""
    _owned(conn, tenant, doc_id)
    stored = knowledge.stored_passages(conn, tenant, doc_id)
    return {"id": doc_id, "passages": json.loads(stored[keys.KB_PASSAGES_TEXTS]) if stored else []}
