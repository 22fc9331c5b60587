"""Time to first audio (TTFA) of streamed replies vs non-streamed, cached answers, and 4 concurrent callers.

One run on the short English clips against the real stack. The baseline, measured in the
same run without queues: raw ASR time + raw LLM time to the first sentence (same messages,
same sentence splitter, temperature 0) + raw piper time for that first sentence. The quality
bar is TTFA / baseline <= 1.10. Usage: `python bench/streaming.py [--limit N]` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline import RawEngines, bench_stack, clips, machine, pct, warm  # noqa: E402
from services.llm import prompts  # noqa: E402
from services.llm.config import LlmSettings  # noqa: E402
from shared import answer_cache  # noqa: E402
from shared.sentences import SentenceSplitter  # noqa: E402


def raw_first_audio(raw: RawEngines, path: Path, llm: LlmSettings, language: str,
                    parts: dict[str, float] | None = None) -> tuple[float, float]:
    """(raw TTFA baseline, raw total) for one clip: ASR, LLM to its first sentence, piper on that sentence.
    `parts`, if given, gets the three terms of the baseline ("asr", "llm_first", "tts_first")."""
    text, asr_s = raw.asr(path)
    warm(raw, llm)
    messages = prompts.build(text, system=llm.llm_system_prompt, language=language)
    splitter = SentenceSplitter(llm.llm_stream_first_comma_chars, llm.llm_stream_min_chars)
    start = time.perf_counter()
    first: str | None = None
    first_s = 0.0
    stream = raw.llm.chat.completions.create(model=llm.llm_model, stream=True, temperature=0.0,
                                             max_tokens=raw.max_tokens, messages=messages)
    reply = ""
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if not delta:
            continue
        reply += delta
        if first is None and (done := splitter.feed(delta)):
            first, first_s = done[0], time.perf_counter() - start
    llm_total = time.perf_counter() - start
    if first is None:
        first, first_s = (splitter.flush() or [reply])[0], llm_total
    tts_first = raw.tts(first)
    if parts is not None:
        parts.update(asr=asr_s, llm_first=first_s, tts_first=tts_first)
    return asr_s + first_s + tts_first, asr_s + llm_total + raw.tts(reply)



def event_times(client: httpx.Client, events_url: str, start: float) -> dict[str, float]:
    """Read a job's SSE stream until it ends: seconds from `start` to the first event of each type. A failed
    job raises with its error."""
    seen: dict[str, float] = {}
    event = ""
    with client.stream("GET", events_url, timeout=600) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                seen.setdefault(event, time.perf_counter() - start)
                if event == "job.failed":
                    raise RuntimeError(json.loads(line[6:]))
                if event == "job.done":
                    break
    return seen


def stream_timings(client: httpx.Client, events_url: str, start: float) -> dict[str, float]:
    """Seconds from `start` to the first `tts.chunk` ("ttfa", if any) and to `job.done` ("total")."""
    seen = event_times(client, events_url, start)
    out = {"total": seen["job.done"]}
    if "tts.chunk" in seen:
        out["ttfa"] = seen["tts.chunk"]
    return out


def follow_turn(client: httpx.Client, post: Any) -> dict[str, float]:
    """Submit, then read the SSE stream: seconds to the first `tts.chunk` and to `job.done`."""
    start = time.perf_counter()
    r = post()
    r.raise_for_status()
    return stream_timings(client, r.json()["events_url"], start)


def turn(client: httpx.Client, path: Path, stream: bool) -> dict[str, float]:
    def post() -> httpx.Response:
        with path.open("rb") as f:
            return client.post("/v1/turns", files={"file": (path.name, f)},
                               data={"language": "en", "stream": str(stream).lower()})
    return follow_turn(client, post)


def chat(client: httpx.Client, text: str) -> dict[str, float]:
    return follow_turn(client, lambda: client.post("/v1/chat", json={"text": text, "language": "en"}))


def show(title: str, rows: list[dict[str, float]], keys: list[str], unit: str = "turns") -> None:
    print(f"\n{title} ({len(rows)} {unit})")
    print(f"{'figure':34s} {'median':>9s} {'p95':>9s}")
    for key in keys:
        values = [r[key] for r in rows if key in r]
        if values:
            print(f"{key:34s} {statistics.median(values):9.3f} {pct(values, 0.95):9.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    with bench_stack("vq-bench-stream-") as (stack, raw, llm, port):
        conn = redis.Redis(port=port)
        rows: list[dict[str, float]] = []
        with httpx.Client(base_url=stack.base_url, timeout=600) as client:
            for path in clips(args.limit):
                row: dict[str, float] = {}
                row["raw_ttfa"], row["raw_total"] = raw_first_audio(raw, path, llm, "en")
                warm(raw, llm)
                forget_answers(conn)  # each path must really run the LLM, not hit the other's cached answer
                streamed = turn(client, path, stream=True)
                warm(raw, llm)
                forget_answers(conn)
                plain = turn(client, path, stream=False)
                row.update(ttfa_stream=streamed["ttfa"], total_stream=streamed["total"],
                           ttfa_nostream=plain["ttfa"], total_nostream=plain["total"])
                row["ratio"] = row["ttfa_stream"] / row["raw_ttfa"]
                rows.append(row)
                print(f"{path.name:42s} TTFA stream {row['ttfa_stream']:.2f}s no-stream {row['ttfa_nostream']:.2f}s "
                      f"raw {row['raw_ttfa']:.2f}s ratio {row['ratio']:.3f}", flush=True)
            cached = cached_answers(client)
            forget_answers(conn)
            concurrent = concurrent_turns(stack.base_url, clips(args.limit), args.concurrency)
        print(f"\nmachine: {machine()}")
        show("single caller", rows, ["raw_ttfa", "ttfa_stream", "ttfa_nostream", "raw_total", "total_stream",
                                     "total_nostream", "ratio"])
        show("cached answers (/v1/chat, answer cache and speech cache hit)", cached, ["ttfa", "total"])
        show(f"{args.concurrency} concurrent callers, streaming", concurrent, ["ttfa", "total"])
        base = statistics.median(r["raw_ttfa"] for r in rows)
        print(f"\nbaseline: raw ASR + raw LLM to first sentence + raw TTS of first sentence, median {base:.3f} s")
        print(f"TTFA ratio (streaming / baseline): median {statistics.median(r['ratio'] for r in rows):.3f} "
              "(target <= 1.10)")
        print(f"streaming vs non-streaming TTFA: median {statistics.median(r['ttfa_stream'] for r in rows):.3f} s "
              f"vs {statistics.median(r['ttfa_nostream'] for r in rows):.3f} s")
        conc = statistics.median(r["ttfa"] for r in concurrent)
        print(f"{args.concurrency} concurrent callers: median TTFA {conc:.3f} s = {conc / base:.2f}x the "
              "single-caller baseline (the callers share 2 cores: the llama.cpp server's slots decode together, "
              "and the prefills and ASR take turns)")


def forget_answers(conn: redis.Redis) -> None:
    for key in conn.scan_iter(f"{answer_cache.PREFIX}*"):
        conn.delete(key)


def cached_answers(client: httpx.Client) -> list[dict[str, float]]:
    """Ask each question twice; time the second (answer cache and speech cache hits)."""
    # Not about hours, delivery or prices: those a tenant without documents answers without the model or cache.
    questions = ["How do I log in to my account?", "How do I reset my password?", "Can I change my username?",
                 "How do I update my email?", "How do I cancel my order?"]
    for q in questions:
        chat(client, q)
    return [chat(client, q) for q in questions]


def closed_loop(paths: list[Path], callers: int, one: Callable[[httpx.Client, Path], dict[str, float]],
                base_url: str) -> tuple[list[dict[str, float]], int, float]:
    """`callers` threads take the next clip until none is left; (rows, errors, wall seconds)."""
    work = list(paths)
    rows: list[dict[str, float]] = []
    errors = [0]
    lock = threading.Lock()

    def caller() -> None:
        with httpx.Client(base_url=base_url, timeout=600) as client:
            while True:
                with lock:
                    if not work:
                        return
                    path = work.pop(0)
                try:
                    row = one(client, path)
                except Exception as exc:  # counted and shown; the run goes on
                    print(f"  error on {path.name}: {exc!r}", flush=True)
                    with lock:
                        errors[0] += 1
                    continue
                with lock:
                    rows.append(row)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rows, errors[0], time.perf_counter() - start


def concurrent_turns(base_url: str, paths: list[Path], callers: int) -> list[dict[str, float]]:
    rows, errors, _ = closed_loop(paths, callers, lambda client, path: turn(client, path, stream=True), base_url)
    if errors:
        raise RuntimeError(f"{errors} of {len(paths)} concurrent turns failed")
    return rows


if __name__ == "__main__":
    main()
