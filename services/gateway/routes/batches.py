"""Batches of recorded calls: submit (multipart files or uploaded inputs), progress, results, cancel."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Annotated, Any, Literal, cast

import redis
from fastapi import APIRouter, Query, Request, Response, UploadFile
from fastapi.responses import PlainTextResponse
from pydantic import Field, ValidationError
from starlette.datastructures import Headers
from starlette.datastructures import UploadFile as FormFile

from services.gateway import batches, exports
from services.gateway.config import GatewaySettings
from services.gateway.deps import BlobsDep, RedisDep, SettingsDep, TenantDep
from services.gateway.errors import ApiError
from services.gateway.uploads import check_language, read_audio
from services.gateway.validate import StrictBody
from shared import connection, jobs, keys
from shared.blobs import RedisBlobStore

router = APIRouter(tags=["batches"])


class BatchOptions(StrictBody):
    language: str | None = Field(None, description="ISO code for every call; default: detected per call.")
    summarize: bool = Field(False, description="Also run the LLM's structured analysis of each call.")
    channel_speakers: list[str] | None = Field(None, description="Speaker names of channels 0 and 1 (stereo).")
    hotwords: str | None = Field(None, description="Words the recogniser should favour (names, products).")
    initial_prompt: str | None = Field(None, description="Text the recogniser is primed with.")


class BatchInputs(StrictBody):
    inputs: list[str] = Field(description="Ids of jobs or blobs already uploaded; their audio becomes the calls.")
    options: BatchOptions = Field(default_factory=BatchOptions)


def _job_options(opts: BatchOptions) -> dict[str, Any]:
    if opts.channel_speakers is not None and len(opts.channel_speakers) != 2:
        raise ApiError(400, "invalid_channel_speakers", "channel_speakers must name exactly 2 speakers")
    return {"language": check_language(opts.language), "hotwords": opts.hotwords or None,
            "initial_prompt": opts.initial_prompt or None, "channel_speakers": opts.channel_speakers,
            "analysis": opts.summarize}


def _form_options(form: Any) -> BatchOptions:
    speakers = form.get("channel_speakers")
    if isinstance(speakers, str) and speakers.strip():
        speakers = json.loads(speakers) if speakers.lstrip().startswith("[") else speakers.split(",")
    fields = {k: form.get(k) for k in ("language", "hotwords", "initial_prompt") if form.get(k)}
    try:
        return BatchOptions(**fields, summarize=form.get("summarize") or False, channel_speakers=speakers or None)
    except (ValidationError, ValueError) as exc:
        raise ApiError(400, "invalid_options", f"invalid batch options: {exc}") from exc


def _call_options(options: dict[str, Any], form: Any) -> dict[str, Any]:
    """A multipart `call_language` field overrides the batch's language for that request's files (manifests)."""
    language = form.get("call_language")
    return {**options, "language": check_language(language)} if isinstance(language, str) and language else options


def _accept(conn: redis.Redis, settings: GatewaySettings, batch_id: str, options: dict[str, Any],
            upload: UploadFile, tenant: str, written: list[tuple[str, str]]) -> dict[str, Any]:
    """One recording into the batch: a queued call, the call it duplicates, or a failed call with its reason."""
    data = upload.file.read(settings.batch_max_file_bytes + 1)
    upload.file.seek(0)
    sha = batches.content_hash(data)
    seq, existing = batches.claim(conn, batch_id, sha)
    if existing is not None:
        return {**existing, "duplicate": True}
    name = upload.filename or f"call-{seq}"
    try:
        checked = read_audio(upload, settings, settings.batch_max_audio_s, settings.batch_max_file_bytes)
    except ApiError as exc:
        return batches.put_member(conn, batch_id, seq, {"file": name, "hash": sha, "duration_s": None,
                                                        "error": {"reason": exc.code, "message": exc.message}},
                                  settings.job_ttl_s)
    return batches.add_call(conn, settings, batch_id, seq, data=checked.data, content_type=checked.content_type,
                            filename=name, sha=sha, info=checked.info.as_dict(), options=options, tenant=tenant,
                            written=written)


def _add(conn: redis.Redis, settings: GatewaySettings, batch_id: str, options: dict[str, Any],
         uploads: list[UploadFile], tenant: str) -> list[dict[str, Any]]:
    """The recordings into the batch; acknowledged (with replicas to wait for) once a replica holds them."""
    held = int(conn.hget(batches.key(batch_id), keys.BATCH_COUNT) or 0)
    if held + len(uploads) > settings.batch_max_files:
        raise ApiError(413, "too_many_files", f"a batch holds at most {settings.batch_max_files} calls")
    written = [(batches.key(batch_id), keys.BATCH_META)]
    added = [_accept(conn, settings, batch_id, options, u, tenant, written) for u in uploads]
    connection.wait_for_replicas(conn, settings, holding=written)
    return added


def _stored_inputs(conn: redis.Redis, blobs: RedisBlobStore, ids: list[str], tenant: str) -> list[UploadFile]:
    """The tenant's audio already in the store, by job id or blob id, as uploads (so it is checked like one).
    Another tenant's ids are refused exactly like unknown ones."""
    found = []
    for ident in ids:
        record = jobs.fetch(conn, ident)
        if record is not None and record.tenant != tenant:
            record = None  # not this caller's job: the id may still name one of its blobs, which it cannot
        blob_id = record.inputs.blob_id if record else ident
        blob = blobs.get(blob_id) if blob_id and blobs.tenant(blob_id) == tenant else None
        if blob is None:
            raise ApiError(400, "unknown_input", f"no uploaded audio with job or blob id {ident!r}")
        name = (record.inputs.filename or ident) if record else ident
        found.append(UploadFile(io.BytesIO(blob[0]), filename=name, headers=Headers({"content-type": blob[1]})))
    return found


def _files(form: Any) -> list[UploadFile]:
    # Parsed forms hold starlette's UploadFile, which FastAPI's only subclasses.
    return [cast(UploadFile, f) for f in form.getlist("files") if isinstance(f, FormFile)]


def _meta_or_404(conn: redis.Redis, batch_id: str, tenant: str) -> dict[str, Any]:
    """The batch's meta if `tenant` owns it; another tenant's batch is answered exactly like an unknown one."""
    info = batches.owned_meta(conn, batch_id, tenant)
    if info is None:
        raise ApiError(404, "batch_not_found", f"no batch with id {batch_id!r}")
    return info


def _summary_or_404(conn: redis.Redis, batch_id: str, tenant: str) -> dict[str, Any]:
    _meta_or_404(conn, batch_id, tenant)
    summary = batches.summary(conn, batch_id)
    if summary is None:  # expired in between
        raise ApiError(404, "batch_not_found", f"no batch with id {batch_id!r}")
    return summary


FORM_FIELDS = ("language", "call_language", "summarize", "channel_speakers", "hotwords", "initial_prompt")
MULTIPART_SCHEMA = {"type": "object", "properties": {
    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
    **{k: {"type": "string"} for k in FORM_FIELDS}}}


@router.post("/v1/batches", status_code=202, openapi_extra={"requestBody": {"content": {
    "multipart/form-data": {"schema": MULTIPART_SCHEMA},
    "application/json": {"schema": BatchInputs.model_json_schema()}}}})
async def create_batch(request: Request, conn: RedisDep, blobs: BlobsDep, settings: SettingsDep,
                       tenant: TenantDep) -> dict[str, Any]:
    """Multipart `files` with option fields, or JSON `{inputs, options}`. Bad files become failed calls."""
    if request.headers.get("content-type", "").startswith("multipart/"):
        form: Any = await request.form(max_files=settings.batch_max_files + 1)
        opts = _form_options(form)
        uploads = _files(form)
    else:
        try:
            body = BatchInputs.model_validate_json(await request.body())
        except ValidationError as exc:
            raise ApiError(400, "invalid_request", f"expected multipart files or JSON {{inputs, options}}: "
                           f"{exc.errors()[0]['msg']}") from exc
        opts, form = body.options, {}
        uploads = await asyncio.to_thread(_stored_inputs, conn, blobs, body.inputs, tenant)
    options = _job_options(opts)
    if not uploads:
        raise ApiError(400, "empty_batch", "the batch has no calls: send at least one file or input")
    if len(uploads) > settings.batch_max_files:
        raise ApiError(413, "too_many_files", f"a batch holds at most {settings.batch_max_files} calls")
    batch_id = batches.create(conn, options, settings.job_ttl_s, tenant=tenant)
    added = await asyncio.to_thread(_add, conn, settings, batch_id, _call_options(options, form), uploads, tenant)
    return {"id": batch_id, "calls": added}


@router.post("/v1/batches/{batch_id}/files")
async def add_files(batch_id: str, request: Request, conn: RedisDep, settings: SettingsDep,
                    tenant: TenantDep) -> dict[str, Any]:
    """More recordings for an existing batch (clients upload one call a request); known content is not re-run."""
    info = _meta_or_404(conn, batch_id, tenant)
    form = await request.form(max_files=settings.batch_max_files + 1)
    uploads = _files(form)
    if not uploads:
        raise ApiError(400, "no_files", "send at least one file in the multipart field 'files'")
    added = await asyncio.to_thread(_add, conn, settings, batch_id, _call_options(info["options"], form), uploads,
                                    tenant)
    return {"id": batch_id, "calls": added}


@router.get("/v1/batches/{batch_id}")
def get_batch(batch_id: str, conn: RedisDep, tenant: TenantDep) -> dict[str, Any]:
    """Counts by status, audio seconds done and total, throughput, ETA, and the failures with their reasons."""
    return _summary_or_404(conn, batch_id, tenant)


@router.get("/v1/batches/{batch_id}/results",
            responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}})
def batch_results(batch_id: str, conn: RedisDep, tenant: TenantDep,
                  format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl") -> Response:
    _meta_or_404(conn, batch_id, tenant)
    rows = batches.results(conn, batch_id)
    if format == "csv":
        return PlainTextResponse(exports.csv_text(rows), media_type="text/csv")
    return PlainTextResponse(exports.jsonl(rows), media_type="application/x-ndjson")


@router.delete("/v1/batches/{batch_id}", responses={204: {"description": "With purge=true: all of it is gone."}})
def cancel_batch(
    batch_id: str, conn: RedisDep, settings: SettingsDep, tenant: TenantDep,
    purge: Annotated[bool, Query(description="Also delete every call's record, audio and results.")] = False,
) -> Any:
    """Cancel the calls not started yet; running calls finish and keep their results.
    With `purge=true` everything the batch stored is deleted as well (204)."""
    _meta_or_404(conn, batch_id, tenant)
    cancelled = batches.cancel(conn, settings, batch_id)
    if purge:
        batches.purge(conn, batch_id)
        return Response(status_code=204)
    return {"id": batch_id, "cancelled": cancelled, **{"status": batches.summary(conn, batch_id)}}
