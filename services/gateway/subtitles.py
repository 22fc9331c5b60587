"""SRT and WebVTT from timed segments."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _label(seg: Mapping[str, Any]) -> str:
    text = str(seg["text"]).strip()
    return f"{seg['speaker']}: {text}" if seg.get("speaker") else text


def srt(segments: Iterable[Mapping[str, Any]]) -> str:
    blocks = [
        f"{i}\n{_stamp(s['start'], ',')} --> {_stamp(s['end'], ',')}\n{_label(s)}\n"
        for i, s in enumerate(segments, 1)
    ]
    return "\n".join(blocks)


def vtt(segments: Iterable[Mapping[str, Any]]) -> str:
    blocks = [f"{_stamp(s['start'], '.')} --> {_stamp(s['end'], '.')}\n{_label(s)}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)
