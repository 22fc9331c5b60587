"""The CPU budget's table: 4 concurrent live turns through the whole stack at a few thread splits.

Each split starts a fresh stack (own Redis, llm-server, workers, gateway) with its thread
settings, then 4 closed-loop callers send 12 distinct English clips (answer and speech
caches off, so every turn really runs ASR, LLM and TTS). Prints per split: first reply
audio (first `tts.chunk` event) p50/p95, whole turn p50/p95, turns per second. The first
split is the default budget (shared/cpu.py); the others are compared against it in the same run.

Usage: `python bench/cpu_budget.py [--callers 4] [--clips 12] [--splits budget,all-cores,...]`.
Figures depend on what else runs on the machine: the load average is printed with them.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline import clips, pct, wait_warm  # noqa: E402
from bench.streaming import concurrent_turns  # noqa: E402
from shared import cpu, redis_server  # noqa: E402
from tests.stack import Stack, free_port  # noqa: E402


def splits() -> dict[str, dict[str, int]]:
    """Threads per engine: ASR, LLM server, TTS (and the LLM server's slots)."""
    b, n = cpu.budget(), cpu.cores()
    return {
        "budget": {"asr": b.asr, "llm": b.llm_server, "tts": b.tts, "slots": b.llm_slots},
        "all-cores": {"asr": n, "llm": n, "tts": n, "slots": b.llm_slots},  # each engine's own default
        "llm-half": {"asr": b.asr, "llm": max(1, n // 2), "tts": b.tts, "slots": b.llm_slots},
        "asr-all": {"asr": n, "llm": b.llm_server, "tts": b.tts, "slots": b.llm_slots},
        "one-slot": {"asr": b.asr, "llm": b.llm_server, "tts": b.tts, "slots": 1},
    }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_split(name: str, threads: dict[str, int], paths: list[Path], callers: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"vq-budget-{name}-"))
    port = free_port()
    redis_proc = subprocess.Popen(redis_server.command(port, tmp / "redis"), stdout=subprocess.DEVNULL)
    stack = Stack(f"redis://127.0.0.1:{port}/0", tmp / "logs")
    env = {"VQ_ASR_CPU_THREADS": str(threads["asr"]), "VQ_LLM_SERVER_THREADS": str(threads["llm"]),
           "VQ_TTS_CPU_THREADS": str(threads["tts"]), "VQ_LLM_SERVER_SLOTS": str(threads["slots"]),
           "VQ_LLM_ANSWER_CACHE": "false", "VQ_TTS_CACHE_TTL_S": "0"}
    try:
        stack.start(extra_env=env)
        wait_warm(stack)
        start = time.perf_counter()
        rows = concurrent_turns(stack.base_url, paths, callers)
        wall = time.perf_counter() - start
    finally:
        stack.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
    ttfa = [r["ttfa"] for r in rows if "ttfa" in r]
    total = [r["total"] for r in rows]
    return {"split": name, **threads, "turns": len(rows), "ttfa_p50": round(statistics.median(ttfa), 2),
            "ttfa_p95": round(pct(ttfa, 0.95), 2), "turn_p50": round(statistics.median(total), 2),
            "turn_p95": round(pct(total, 0.95), 2), "turns_per_s": round(len(rows) / wall, 3),
            "loadavg": loadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--callers", type=int, default=4)
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--splits", default="budget,all-cores,llm-half,asr-all")
    args = ap.parse_args()
    chosen = splits()
    paths = clips(args.clips)
    print(f"cores {cpu.cores()}, {args.callers} callers, {len(paths)} clips, load average {loadavg()}", flush=True)
    rows = []
    for name in args.splits.split(","):
        row = run_split(name, chosen[name], paths, args.callers)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| split | asr / llm / tts threads, slots | first audio p50 / p95 (s) | turn p50 / p95 (s) | turns/s | "
          "vs budget | load avg |")
    print("|---|---|---|---|---|---|---|")
    base = float(rows[0]["turns_per_s"])
    for r in rows:
        print(f"| {r['split']} | {r['asr']} / {r['llm']} / {r['tts']}, {r['slots']} | {r['ttfa_p50']} / "
              f"{r['ttfa_p95']} | {r['turn_p50']} / {r['turn_p95']} | {r['turns_per_s']} | "
              f"{float(r['turns_per_s']) / base:.2f} | {r['loadavg']} |")


if __name__ == "__main__":
    main()
