"""Where a turn's first audio goes under concurrent callers, from the job records and the events stream.

The same stack and clips as `bench/concurrency.py` (12 distinct English clips, closed-loop callers, answer
and speech caches emptied before each round). Per turn, from the moment the caller posts:
- ASR wait: until the ASR stage starts (behind other callers' transcriptions);
- ASR run: the stage's own time;
- LLM wait: from the transcript until the LLM stage starts;
- to first delta: from the LLM stage's start to its first `llm.delta` event (the answer cache, any action
  decision, then the prompt's prefill), of which
- action decision: the model's pick among the actions the words could mean (0 when none could);
- server's first token: the time the LLM server took to its first token (the prefill alone);
- first sentence: from the first `llm.delta` event to the first `tts.chunk` (decoding the first sentence, then
  piper speaking it);
- first audio: the first `tts.chunk`, as `bench/concurrency.py` measures it.
Printed as p50 / p95 over all turns, with turns per second per round.

Usage: `python bench/first_audio.py [--callers 4] [--rounds 2]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.concurrency import empty_caches, loadavg  # noqa: E402
from bench.pipeline import clips, pct, wait_warm  # noqa: E402
from bench.streaming import closed_loop, event_times  # noqa: E402
from shared import redis_server  # noqa: E402
from tests.stack import Stack, free_port  # noqa: E402

PARTS = ("asr wait", "asr run", "llm wait", "to first delta", "action decision", "server's first token",
         "first sentence", "first audio")


def turn(client: httpx.Client, path: Path) -> dict[str, float]:
    posted, start = time.time(), time.perf_counter()
    with path.open("rb") as f:
        r = client.post("/v1/turns", files={"file": (path.name, f)}, data={"language": "en", "stream": "true"})
    r.raise_for_status()
    seen = event_times(client, r.json()["events_url"], start)
    job: dict[str, Any] = client.get(r.json()["status_url"]).json()
    asr, llm = job["stages"]["asr"], job["stages"]["llm"]
    return {
        "asr wait": asr["started_at"] - posted,
        "asr run": asr["finished_at"] - asr["started_at"],
        "llm wait": llm["started_at"] - asr["finished_at"],
        "to first delta": posted + seen["llm.delta"] - llm["started_at"],
        "action decision": float((job["results"]["llm"].get("tool_decision") or {}).get("seconds") or 0.0),
        "server's first token": float(job["results"]["llm"].get("ttft_s") or 0.0),
        "first sentence": seen["tts.chunk"] - seen["llm.delta"],
        "first audio": seen["tts.chunk"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--callers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--per-turn", action="store_true", help="also print every turn's parts")
    args = ap.parse_args()
    print(f"load average at start: {loadavg()}", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="vq-bench-first-audio-"))
    port = free_port()
    redis_proc = subprocess.Popen(redis_server.command(port, log_dir / "redis"), stdout=subprocess.DEVNULL)
    stack = Stack(f"redis://127.0.0.1:{port}/0", log_dir / "stack")
    paths = clips(12)
    rows: list[dict[str, float]] = []
    try:
        stack.start()
        wait_warm(stack)
        with httpx.Client(base_url=stack.base_url, timeout=600) as client:
            turn(client, paths[0])  # first-use costs are not counted, as in bench/concurrency.py
        for n in range(args.rounds):
            empty_caches(redis.Redis(port=port))
            done, errors, wall = closed_loop(paths, args.callers, turn, stack.base_url)
            rows += done
            print(json.dumps({"round": n + 1, "callers": args.callers, "turns": len(done), "errors": errors,
                              "turns_per_s": round(len(done) / wall, 3)}), flush=True)
    finally:
        stack.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
    if args.per_turn:
        print("\n" + " ".join(f"{p[:12]:>12s}" for p in PARTS))
        for r in rows:
            print(" ".join(f"{r[p]:12.2f}" for p in PARTS))
    print(f"\n{len(rows)} turns at {args.callers} callers (seconds)")
    for part in PARTS:
        values = [r[part] for r in rows]
        print(f"  {part:21s} p50 {statistics.median(values):6.2f}   p95 {pct(values, 0.95):6.2f}")
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
