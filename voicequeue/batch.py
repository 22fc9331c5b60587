"""`voicequeue batch`: submit recorded calls to the gateway, follow them, export the results.

`submit` is resumable: a state file next to `--out` maps each call's content
hash to its batch job and whether its row is already written, so re-running
the same command after an interrupt uploads nothing twice and skips calls
already done.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.gateway import exports
from voicequeue import http

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".wma",
                            ".amr", ".aif", ".aiff", ".au", ".caf", ".mka"})
TERMINAL = ("done", "failed", "cancelled")
LANGUAGE = re.compile(r"^[a-z]{2,3}$")
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class UsageError(Exception):
    """Input the command cannot start with: exit code 2."""


@dataclass
class Call:
    path: Path
    language: str | None = None
    sha: str = ""


def _manifest(path: Path) -> list[Call]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    if rows and "file" not in rows[0]:
        raise UsageError(f"{path}: a manifest needs a 'file' column")
    calls = [Call(path.parent / row["file"], row.get("language") if LANGUAGE.match(row.get("language") or "")
                  else None) for row in rows]
    missing = [str(c.path) for c in calls if not c.path.is_file()]
    if missing:
        raise UsageError(f"{path}: {len(missing)} file(s) in the manifest do not exist: {', '.join(missing[:5])}")
    return calls


def collect(paths: list[Path]) -> list[Call]:
    """Files as given, directories' audio files (recursive), and manifests' rows; deduplicated by content."""
    calls: list[Call] = []
    for path in paths:
        if path.is_dir():
            calls += [Call(p) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
        elif path.is_file() and path.suffix.lower() in (".tsv", ".csv"):
            calls += _manifest(path)
        elif path.is_file():
            calls.append(Call(path))
        else:
            raise UsageError(f"{path}: no such file or directory")
    unique: dict[str, Call] = {}
    for call in calls:
        call.sha = hashlib.sha256(call.path.read_bytes()).hexdigest()
        unique.setdefault(call.sha, call)
    if not unique:
        raise UsageError("no calls to submit: the paths hold no audio files")
    return list(unique.values())


class State:
    """The resume record: {options, batch_id, calls: {sha: {file, job_id, written}}}, rewritten atomically."""

    def __init__(self, path: Path, options: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"options": options, "batch_id": None, "calls": {}}
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("options") != options:
                raise UsageError(f"{path} was made with other options ({saved.get('options')}); "
                                 "use another --out or delete it")
            self.data = saved

    @property
    def calls(self) -> dict[str, dict[str, Any]]:
        calls: dict[str, dict[str, Any]] = self.data["calls"]
        return calls

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, ensure_ascii=False))
        os.replace(tmp, self.path)


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise httpx.HTTPStatusError(f"{response.status_code}: {message}", request=response.request,
                                    response=response)
    return response.json()


def _form(options: dict[str, Any], call: Call) -> dict[str, str]:
    fields = {k: str(v) for k, v in options.items() if v not in (None, False)}
    if options.get("channel_speakers"):
        fields["channel_speakers"] = ",".join(options["channel_speakers"])
    if call.language and not options.get("language"):
        fields["call_language"] = call.language
    return fields


def _upload(client: httpx.Client, state: State, options: dict[str, Any], call: Call) -> None:
    batch_id = state.data["batch_id"]
    with call.path.open("rb") as f:
        files = {"files": (call.path.name, f)}
        url = "/v1/batches" if batch_id is None else f"/v1/batches/{batch_id}/files"
        body = _check(client.post(url, data=_form(options, call), files=files))
    state.data["batch_id"] = body["id"]
    member = body["calls"][0]
    state.calls[call.sha] = {"file": str(call.path), "job_id": member.get("job_id"), "written": False}
    state.save()


def _write_rows(out: Path, state: State, rows: list[dict[str, Any]], by_hash: dict[str, Call]) -> int:
    """Append the rows of calls that finished since the last look; returns how many."""
    fresh = []
    for row in rows:
        entry = state.calls.get(row["hash"])
        if row["status"] in TERMINAL and entry is not None and not entry["written"]:
            local = by_hash.get(row["hash"])
            fresh.append({**row, "file": str(local.path) if local else row["file"]})
            entry["written"] = True
    if fresh:
        with out.open("a", encoding="utf-8") as f:
            f.write(exports.jsonl(fresh))
            f.flush()
            os.fsync(f.fileno())
        state.save()
    return len(fresh)


def _postfix(summary: dict[str, Any]) -> str:
    done_s = float(summary["audio_s_done"])
    rtf = summary["elapsed_s"] / done_s if done_s else 0.0
    eta = summary["eta_s"]
    return (f"{done_s / 3600:.3f}/{summary['audio_s_total'] / 3600:.3f} audio h, RTF {rtf:.2f}, "
            f"ETA {'?' if eta is None else f'{eta:.0f} s'}, failed {summary['counts']['failed']}")


def submit(args: Any) -> int:
    from tqdm import tqdm

    options = {"language": args.language, "summarize": args.summarize, "hotwords": args.hotwords,
               "channel_speakers": args.channel_speakers.split(",") if args.channel_speakers else None}
    out = Path(args.out)
    try:
        calls = collect([Path(p) for p in args.paths])
        state = State(out.with_name(out.name + ".state.json"), options)
    except UsageError as exc:
        print(f"voicequeue batch submit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    by_hash = {c.sha: c for c in calls}
    written = sum(1 for c in calls if state.calls.get(c.sha, {}).get("written"))
    bar = tqdm(total=len(calls), initial=written, unit="call", disable=args.quiet, file=sys.stderr)
    try:
        with http.client(args.url, args.api_key, 600) as client:
            if state.data["batch_id"] and client.get(f"/v1/batches/{state.data['batch_id']}").status_code == 404:
                # The server forgot the batch (expired, Redis wiped): resubmit what was not written.
                state.data["batch_id"] = None
                state.data["calls"] = {k: v for k, v in state.calls.items() if v["written"]}
            bar.set_description("uploading")
            for call in calls:
                if call.sha not in state.calls:
                    _upload(client, state, options, call)
            bar.set_description("processing")
            summary = _follow(client, out, state, by_hash, bar, args.poll)
    except KeyboardInterrupt:
        state.save()
        bar.close()
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except httpx.HTTPError as exc:
        bar.close()
        print(f"voicequeue batch submit: gateway at {args.url}: {exc}", file=sys.stderr)
        return 1
    bar.close()
    counts = summary["counts"]
    print(f"batch {summary['id']}: {counts['done']} done, {counts['failed']} failed, "
          f"{summary['audio_s_done'] / 3600:.3f} audio h; results in {out}", file=sys.stderr)
    for failure in summary["failures"]:
        print(f"  failed: {failure['file']}: {failure['reason']}: {failure['message']}", file=sys.stderr)
    return EXIT_PARTIAL if counts["failed"] or counts["cancelled"] else 0


def _follow(client: httpx.Client, out: Path, state: State, by_hash: dict[str, Call], bar: Any,
            poll_s: float) -> dict[str, Any]:
    batch_id = state.data["batch_id"]
    seen = -1
    while True:
        summary = _check(client.get(f"/v1/batches/{batch_id}"))
        finished = sum(summary["counts"][s] for s in TERMINAL)
        if finished != seen:
            rows = [json.loads(line) for line in client.get(f"/v1/batches/{batch_id}/results").text.splitlines()]
            bar.update(_write_rows(out, state, rows, by_hash))
            seen = finished
        bar.set_postfix_str(_postfix(summary))
        if summary["finished"]:
            return dict(summary)
        time.sleep(poll_s)


def status(args: Any) -> int:
    with http.client(args.url, args.api_key, 60) as client:
        response = client.get(f"/v1/batches/{args.id}")
    if response.status_code == 404:
        print(f"voicequeue batch status: no batch {args.id!r}", file=sys.stderr)
        return EXIT_USAGE
    summary = _check(response)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"batch {args.id}: {summary['calls']} calls ({counts}); {_postfix(summary)}")
    for failure in summary["failures"]:
        print(f"  failed: {failure['file']}: {failure['reason']}: {failure['message']}")
    return 0


def export(args: Any) -> int:
    with http.client(args.url, args.api_key, 600) as client:
        response = client.get(f"/v1/batches/{args.id}/results", params={"format": "jsonl"})
    if response.status_code == 404:
        print(f"voicequeue batch export: no batch {args.id!r}", file=sys.stderr)
        return EXIT_USAGE
    if response.status_code >= 400:
        _check(response)
    rows = [json.loads(line) for line in response.text.splitlines()]
    for path in exports.write(rows, args.format, Path(args.out)):
        print(path)
    return 0
