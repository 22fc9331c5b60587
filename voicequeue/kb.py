"""`voicequeue kb`: a tenant's knowledge base through the gateway: add files and folders, list, remove.

`add` uploads each Markdown, text, HTML or PDF file (folders recursively) as a document whose id is
its path relative to the folder given (so adding the same folder again replaces its documents), then
follows their indexing until every one is ready or failed, with progress on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from shared import knowledge
from voicequeue import http

SUFFIXES = frozenset({".md", ".markdown", ".txt", ".text", ".html", ".htm", ".pdf"})
ROUTE = "/v1/knowledge/documents"
EXIT_USAGE, EXIT_PARTIAL = 2, 3


def collect(paths: list[Path]) -> list[tuple[Path, str]]:
    """(file, document id) for every readable file given or found in a folder."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            found += [(p, str(p.relative_to(path))) for p in sorted(path.rglob("*"))
                      if p.is_file() and p.suffix.lower() in SUFFIXES]
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return found


def doc_id(name: str) -> str:
    return knowledge.doc_id_for(name)


def _progress(done: int, total: int, what: str, quiet: bool) -> None:
    if not quiet:
        width = 30
        filled = width * done // max(total, 1)
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what:<40.40}", end="", file=sys.stderr,
              flush=True)


def add(args: argparse.Namespace) -> int:
    try:
        files = collect([Path(p) for p in args.paths])
    except FileNotFoundError as exc:
        print(f"voicequeue kb add: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not files:
        print("voicequeue kb add: no Markdown, text, HTML or PDF files in the paths given", file=sys.stderr)
        return EXIT_USAGE
    refused: list[str] = []
    pending: dict[str, str] = {}
    with http.client(args.url, args.api_key, args.timeout) as client:
        for n, (path, name) in enumerate(files, 1):
            _progress(n - 1, len(files), f"uploading {name}", args.quiet)
            with path.open("rb") as f:
                response = client.post(ROUTE, files={"file": (path.name, f)}, data={"id": doc_id(name),
                                                                                     "title": path.stem})
            if response.status_code == 202:
                pending[response.json()["id"]] = name
            else:
                refused.append(f"{name}: {http.error_text(response)}")
        _progress(len(files), len(files), "uploaded", args.quiet)
        failed = _follow(client, pending, args) if args.wait else []
    if not args.quiet:
        print(file=sys.stderr)
    for line in refused + failed:
        print(f"  failed: {line}", file=sys.stderr)
    ready = len(pending) - len(failed)
    print(f"{ready if args.wait else len(pending)} document(s) {'ready' if args.wait else 'queued for indexing'}"
          f", {len(refused) + len(failed)} failed")
    return EXIT_PARTIAL if refused or failed else 0


def _follow(client: httpx.Client, pending: dict[str, str], args: argparse.Namespace) -> list[str]:
    """Wait until every document is ready or failed; returns the failures."""
    waiting = dict(pending)
    failed: list[str] = []
    deadline = time.monotonic() + args.wait_s
    while waiting and time.monotonic() < deadline:
        for ident in list(waiting):
            response = client.get(f"{ROUTE}/{ident}")
            doc: dict[str, Any] = response.json() if response.status_code == 200 else {}
            status = doc.get("status", "missing")
            if status == "ready":
                waiting.pop(ident)
            elif status in ("failed", "missing"):
                failed.append(f"{waiting.pop(ident)}: {(doc.get('error') or {}).get('message', status)}")
        _progress(len(pending) - len(waiting), len(pending), "indexing", args.quiet)
        if waiting:
            time.sleep(args.poll)
    failed += [f"{name}: still indexing after {args.wait_s:g} s" for name in waiting.values()]
    return failed


def listing(args: argparse.Namespace) -> int:
    with http.client(args.url, args.api_key, args.timeout) as client:
        response = client.get(ROUTE)
    if response.status_code != 200:
        print(f"voicequeue kb list: {http.error_text(response)}", file=sys.stderr)
        return 1
    docs = response.json()["documents"]
    for doc in docs:
        print(f"{doc['id']}\t{doc['status']}\t{doc.get('passages', 0)} passages\t{doc['title']}")
    print(f"{len(docs)} document(s)", file=sys.stderr)
    return 0


def remove(args: argparse.Namespace) -> int:
    with http.client(args.url, args.api_key, args.timeout) as client:
        code = http.delete_each(client, ROUTE, args.ids, "kb remove")
    return code


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser) -> None:
    top = sub.add_parser("kb", help="the tenant's knowledge base: add documents, list, remove")
    ksub = top.add_subparsers(dest="kb_command", required=True)
    add_p = ksub.add_parser("add", parents=[parent], help="upload Markdown, text, HTML and PDF files or folders "
                            "(recursive); a document's id is its path, so adding again replaces it")
    add_p.add_argument("paths", nargs="+")
    add_p.add_argument("--no-wait", dest="wait", action="store_false", help="do not wait for indexing")
    add_p.add_argument("--wait-s", type=float, default=600.0, help="longest wait for indexing")
    add_p.add_argument("--poll", type=float, default=0.5, help="seconds between status checks")
    add_p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_p.set_defaults(kb_fn=add)
    list_p = ksub.add_parser("list", parents=[parent], help="documents with their status and passage counts")
    list_p.set_defaults(kb_fn=listing)
    rm = ksub.add_parser("remove", parents=[parent], help="delete documents by id (they stop answering at once)")
    rm.add_argument("ids", nargs="+")
    rm.set_defaults(kb_fn=remove)
