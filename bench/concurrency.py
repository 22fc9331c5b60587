"""Capacity under concurrent callers: voicequeue against the one-process design (`bench/monolith.py`).

Both in the same run, same models and parameters (whisper tiny.en beam 5, Qwen2.5-Coder-1.5B
at temperature 0.5 with 160 reply tokens, piper), on the same 12 distinct English clips, with
1, 2, 4 and 8 closed-loop callers (each caller sends its next clip when its last turn is done).
voicequeue's answer and speech caches are emptied before each level, so every turn really runs.

Per level and system: time to first reply audio p50/p95 (voicequeue: the first `tts.chunk` event;
the monolith answers with the whole reply, so its first audio is its whole turn), whole turn
p50/p95, turns per second, reply audio seconds per wall second, errors. Targets at 4 callers:
reply audio/s >= 1.3x the monolith's, first-audio p95 <= 0.5x its whole-turn p95.

Usage: `python bench/concurrency.py [--levels 1,2,4,8] [--clips 12]` (part of `make bench`).
Figures depend on what else runs on the machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline import clips, pct, wait_warm  # noqa: E402
from bench.streaming import closed_loop, stream_timings  # noqa: E402
from shared import answer_cache, redis_server  # noqa: E402
from tests.stack import Stack, free_port, wait_http  # noqa: E402

SPEECH_CACHE_PREFIX = "vq:tts:speech:"
MAX_REFUSALS = 20  # a turn still refused after this many honoured Retry-After waits is an error


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def monolith_turn(client: httpx.Client, path: Path) -> dict[str, float]:
    start = time.perf_counter()
    with path.open("rb") as f:
        r = client.post("/chat", files={"file": (path.name, f)})
    r.raise_for_status()
    total = time.perf_counter() - start
    with wave.open(io.BytesIO(r.content)) as w:
        audio_s = w.getnframes() / w.getframerate()
    return {"ttfa": total, "total": total, "audio_s": audio_s}


def voicequeue_turn(client: httpx.Client, path: Path) -> dict[str, float]:
    """Submit a streamed turn, read its events until done; first `tts.chunk`, whole turn, reply audio seconds.

    A 429 is what a caller would be told: wait `Retry-After` and submit again (counted in "refusals"; the
    time waited counts in the turn). Any other refusal is an error."""
    start = time.perf_counter()
    refusals = 0
    while True:
        with path.open("rb") as f:
            r = client.post("/v1/turns", files={"file": (path.name, f)}, data={"language": "en", "stream": "true"})
        if r.status_code != 429 or refusals >= MAX_REFUSALS:
            break
        refusals += 1
        time.sleep(float(r.headers["Retry-After"]))
    r.raise_for_status()
    out = stream_timings(client, r.json()["events_url"], start)
    job = client.get(r.json()["status_url"]).json()
    out["audio_s"] = float(job["results"]["tts"]["duration_s"])
    # The figure guard or the topic rule may answer with the don't-know line, which the monolith never says.
    out["dont_know"] = float((job["results"]["llm"].get("knowledge") or {}).get("outcome") in ("guarded", "not_found"))
    out["refusals"] = refusals
    out.setdefault("ttfa", out["total"])
    return out


def summary(system: str, callers: int, rows: list[dict[str, float]], errors: int, wall: float) -> dict[str, Any]:
    ttfa = [r["ttfa"] for r in rows] or [float("nan")]
    total = [r["total"] for r in rows] or [float("nan")]
    return {"system": system, "callers": callers, "turns": len(rows), "errors": errors,
            "ttfa_p50": round(statistics.median(ttfa), 2), "ttfa_p95": round(pct(ttfa, 0.95), 2),
            "turn_p50": round(statistics.median(total), 2), "turn_p95": round(pct(total, 0.95), 2),
            "turns_per_s": round(len(rows) / wall, 3),
            "audio_per_s": round(sum(r["audio_s"] for r in rows) / wall, 3),
            "refusals": int(sum(r.get("refusals", 0) for r in rows)),
            "dont_know": int(sum(r.get("dont_know", 0) for r in rows)), "loadavg": loadavg()}


def run_monolith(paths: list[Path], levels: list[int], log_dir: Path) -> list[dict[str, Any]]:
    port = free_port()
    with (log_dir / "monolith.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "bench/monolith.py"), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health", 300, proc)
        with httpx.Client(base_url=base, timeout=600) as client:
            monolith_turn(client, paths[0])  # loads lazily-initialised parts; not counted
        out = []
        for n in levels:
            row = summary("monolith", n, *closed_loop(paths, n, monolith_turn, base))
            print(json.dumps(row), flush=True)
            out.append(row)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def run_voicequeue(paths: list[Path], levels: list[int], log_dir: Path) -> list[dict[str, Any]]:
    port = free_port()
    redis_proc = subprocess.Popen(redis_server.command(port, log_dir / "redis"), stdout=subprocess.DEVNULL)
    stack = Stack(f"redis://127.0.0.1:{port}/0", log_dir / "stack")
    conn = redis.Redis(port=port)
    try:
        stack.start()
        wait_warm(stack)
        with httpx.Client(base_url=stack.base_url, timeout=600) as client:
            voicequeue_turn(client, paths[0])  # as the monolith's: first-use costs are not counted
        out = []
        for n in levels:
            empty_caches(conn)
            row = summary("voicequeue", n, *closed_loop(paths, n, voicequeue_turn, stack.base_url))
            print(json.dumps(row), flush=True)
            out.append(row)
        return out
    finally:
        stack.stop()
        redis_proc.terminate()
        redis_proc.wait(10)


def empty_caches(conn: redis.Redis) -> None:
    for prefix in (answer_cache.PREFIX, SPEECH_CACHE_PREFIX):
        for key in conn.scan_iter(f"{prefix}*"):
            conn.delete(key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--clips", type=int, default=12)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    paths = clips(args.clips)
    print(f"{len(paths)} clips, levels {levels}, load average {loadavg()} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="vq-concurrency-") as tmp:
        mono = run_monolith(paths, levels, Path(tmp))
        vq = run_voicequeue(paths, levels, Path(tmp))
    print(f"\nload average {loadavg()} at end\n")
    print("| callers | system | first audio p50 / p95 (s) | turn p50 / p95 (s) | turns/s | reply audio s per s | "
          "errors | 429s honoured |")
    print("|---|---|---|---|---|---|---|---|")
    for m, v in zip(mono, vq, strict=True):
        for r in (m, v):
            print(f"| {r['callers']} | {r['system']} | {r['ttfa_p50']} / {r['ttfa_p95']} | {r['turn_p50']} / "
                  f"{r['turn_p95']} | {r['turns_per_s']} | {r['audio_per_s']} | {r['errors']} | {r['refusals']} |")
    print("\nratios voicequeue / monolith (targets at 4 callers: audio/s >= 1.3, first-audio p95 / turn p95 <= 0.5)")
    for m, v in zip(mono, vq, strict=True):
        print(f"  {m['callers']} callers: reply audio/s {v['audio_per_s'] / m['audio_per_s']:.2f}x, "
              f"first-audio p95 / monolith turn p95 {v['ttfa_p95'] / m['turn_p95']:.2f}, "
              f"turns/s {v['turns_per_s'] / m['turns_per_s']:.2f}x")


if __name__ == "__main__":
    main()
