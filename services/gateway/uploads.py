"""Checking an uploaded audio file before anything is stored or enqueued."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import UploadFile

from services.gateway.config import GatewaySettings
from services.gateway.errors import ApiError
from shared import audio, languages


@dataclass
class CheckedAudio:
    data: bytes
    info: audio.AudioInfo
    filename: str
    content_type: str


def read_audio(upload: UploadFile, settings: GatewaySettings, max_duration_s: float,
               max_bytes: int | None = None) -> CheckedAudio:
    """`max_bytes`: default the live upload limit; batches pass their own (recordings of up to hours)."""
    limit = max_bytes or settings.max_upload_bytes
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "file_too_large", f"the file is larger than the {limit / 2**20:g} MB limit")
    try:
        info = audio.probe(data, max_duration_s=max_duration_s)
    except audio.AudioError as exc:
        status = 422 if exc.code == "too_long" else 400
        raise ApiError(status, exc.code, exc.message) from exc
    if info.duration_s > max_duration_s:
        raise ApiError(422, "too_long", f"audio is longer than the {max_duration_s:g} s limit")
    return CheckedAudio(data, info, upload.filename or "audio", upload.content_type or "application/octet-stream")


def check_language(code: str | None) -> str | None:
    try:
        return languages.check(code)
    except ValueError as exc:
        raise ApiError(400, "unknown_language", str(exc)) from exc
