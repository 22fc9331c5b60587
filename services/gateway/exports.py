"""A batch's results as files: JSONL (primary), CSV (one row per call), SRT and VTT (one file per call)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from services.gateway import subtitles

FORMATS = ("jsonl", "csv", "srt", "vtt")
CSV_COLUMNS = ("file", "hash", "job_id", "status", "duration_s", "language", "channels", "speakers", "text",
               "summary", "intent", "resolution", "sentiment", "action_items", "pii_found",
               "queue_wait_s", "asr_s", "llm_s", "total_s", "error_reason", "error_message")


def jsonl(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


def csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    analysis = row.get("analysis") or {}
    timings = row.get("timings") or {}
    error = row.get("error") or {}
    speakers = sorted({s["speaker"] for s in row.get("segments") or [] if s.get("speaker")})
    flat = {**{k: row.get(k) for k in ("file", "hash", "job_id", "status", "duration_s", "language", "channels",
                                       "text")},
            **{k: analysis.get(k) for k in ("summary", "intent", "resolution", "sentiment", "action_items",
                                            "pii_found")},
            **{k: timings.get(k) for k in ("queue_wait_s", "asr_s", "llm_s", "total_s")},
            "speakers": ";".join(speakers), "error_reason": error.get("reason"),
            "error_message": error.get("message")}
    return {k: _cell(flat[k]) for k in CSV_COLUMNS}


def csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(csv_row(r) for r in rows)
    return out.getvalue()


def subtitle_name(row: Mapping[str, Any], fmt: str) -> str:
    # The hash prefix keeps two calls named alike (a/call.wav, b/call.wav) apart.
    stem = re.sub(r"[^\w.-]+", "_", Path(str(row.get("file") or "call")).stem)
    return f"{stem}.{str(row.get('hash') or '')[:8]}.{fmt}"


def write(rows: list[Mapping[str, Any]], fmt: str, out_dir: Path) -> list[Path]:
    """Write the export into `out_dir`; calls without segments (failed) get no subtitle file."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt in ("jsonl", "csv"):
        path = out_dir / f"results.{fmt}"
        path.write_text(jsonl(rows) if fmt == "jsonl" else csv_text(rows), encoding="utf-8")
        return [path]
    render = subtitles.srt if fmt == "srt" else subtitles.vtt
    written = []
    for row in rows:
        if row.get("segments"):
            path = out_dir / subtitle_name(row, fmt)
            path.write_text(render(row["segments"]), encoding="utf-8")
            written.append(path)
    return written
