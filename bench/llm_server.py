"""Completion tokens per second summed over 1, 2, 4 and 8 concurrent chat streams, for both local servers.

The baseline is llama-cpp-python's server (one completion at a time), measured in
the same run as llama.cpp's `llama-server` with parallel slots and continuous
batching, both started as `voicequeue llm-server` starts them (llama-server warmed).
Each stream is the product's chat request: its system prompt, a short customer
question (distinct per stream), temperature 0, the product's 160-token cap.

Then the call-analysis path (JSON schema as a grammar, `services.llm.analysis.ask`) on
llama-server: the first analysis on a fresh server against a warm one (a different call),
with the start-up warm-up on and off. Target: first <= 2x warm.

Last, the action router (`services.llm.guided`): for each list of built-in actions it asks about, the
first decision on a fresh llama-server against a second one (other words), warm-up on and off, with the
prompt tokens the server had to prefill.

Usage: `python bench/llm_server.py [--levels 1,2,4,8] [--slots N] [--rounds R] [--no-analysis] [--no-router]`
(part of `make bench`).
Figures depend on what else runs on the machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.llm import analysis, guided  # noqa: E402
from services.llm.config import LlmSettings  # noqa: E402
from services.llm.engines.openai_compat import OpenAICompatEngine  # noqa: E402
from shared.retry import UpstreamError  # noqa: E402
from tests.stack import free_port  # noqa: E402

API_KEY = "sk-bench"
QUESTIONS = [
    "What are your opening hours?",
    "How do I reset my password?",
    "Can I change my delivery address?",
    "My internet is down. What should I try first?",
    "How long does a refund take?",
    "Do you ship to Canada?",
    "How can I cancel my subscription?",
    "Where can I find my invoice?",
]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# Two support calls for the analysis figures: the first analysis reads one, the warm one the other.
CALLS = [
    "agent: Thank you for calling Northwind Internet, this is Dana. How can I help you today?\n"
    "customer: Hi, my internet has been down since yesterday evening and I work from home.\n"
    "agent: I'm sorry to hear that. Can I have your account number?\n"
    "customer: Sure, the account number is 4417 2290.\n"
    "agent: Thanks. I see an outage in your area. A technician is fixing it and service should be back by six pm "
    "today. I will also credit one day to your bill.\n"
    "customer: Okay, that's great, thank you so much for your help.\n"
    "agent: You're welcome. Have a nice day.",
    "agent: Good morning, Contoso Bank, my name is Lee. What can I do for you?\n"
    "customer: I was charged twice for the same purchase at a grocery store on Monday.\n"
    "agent: Let me check. Yes, I see two charges of forty two dollars from the same store.\n"
    "customer: I only paid once. This is the second time this happens and I'm quite annoyed.\n"
    "agent: I understand. I have opened a dispute for the duplicate charge. You will see the refund in three to "
    "five business days.\n"
    "customer: Fine. Please make sure it does not happen again.\n"
    "agent: I have added a note to your account. Is there anything else?\n"
    "customer: No, that's all.",
]


class Server:
    """`python -m services.llm.server` with an engine, on a free port, until stopped."""

    def __init__(self, engine: str, slots: int | None, log_dir: Path, warm: bool = True) -> None:
        self.engine = engine
        self.port = free_port()
        env = {**os.environ, "VQ_LLM_SERVER_ENGINE": engine, "VQ_LLM_SERVER_PORT": str(self.port),
               "VQ_LLM_API_KEY": API_KEY, "VQ_LOG_JSON": "true", "VQ_LLM_SERVER_WARM": str(warm).lower()}
        if slots:
            env["VQ_LLM_SERVER_SLOTS"] = str(slots)
        self.warm = warm
        self.log = log_dir / f"{engine}-{int(time.time() * 1000)}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.llm.server"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def wait(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.engine} exited: {self.log.read_text()[-2000:]}")
            text = self.log.read_text()
            if self.engine == "llama-server" and self.warm:
                ready = "llm server warm" in text
            elif self.engine == "llama-server":
                ready = _health(self.url)
            else:
                ready = "Uvicorn running" in text
            if ready:
                return
            time.sleep(0.5)
        raise TimeoutError(self.engine)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _health(url: str) -> bool:
    try:
        return httpx.get(url.removesuffix("/v1") + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def analyse(url: str, call: str) -> dict[str, float]:
    """One call analysis as the llm worker asks it (schema grammar, validation, retries); seconds and tokens."""
    settings = LlmSettings(llm_base_url=url, llm_api_key=API_KEY)
    speakers = ["agent", "customer"]
    system = analysis.SYSTEM_PROMPT.format(speakers=", ".join(json.dumps(s) for s in speakers))
    totals = analysis.Totals()
    start = time.perf_counter()
    analysis.ask(settings, OpenAICompatEngine(settings), system, f"Transcript:\n{call}", speakers, totals)
    return {"s": round(time.perf_counter() - start, 2), "attempts": totals.attempts,
            "prompt_tokens": totals.prompt_tokens, "completion_tokens": totals.completion_tokens}


def timed_out_or(fn: Any) -> dict[str, float]:
    """The analysis' figures, or its time limit as its seconds when the server did not answer in time."""
    try:
        return dict(fn())
    except UpstreamError as exc:
        print(f"  analysis failed: {exc}", flush=True)
        return {"s": LlmSettings().llm_analysis_timeout_s, "attempts": 0, "timed_out": 1}


def analysis_figures(warm: bool, log_dir: Path) -> dict[str, Any]:
    """First analysis on a fresh llama-server (the start-up warm-up on or off), then a warm one."""
    server = Server("llama-server", None, log_dir, warm=warm)
    try:
        server.wait()
        first = timed_out_or(lambda: analyse(server.url, CALLS[0]))
        warm_run = timed_out_or(lambda: analyse(server.url, CALLS[1]))
    finally:
        server.stop()
    row = {"warm_up": warm, "first": first, "warm": warm_run, "ratio": round(first["s"] / warm_run["s"], 2),
           "loadavg": loadavg()}
    print(json.dumps(row), flush=True)
    return row


# Two caller sentences per list of actions the router asks about: the first decision reads one, the warm one the other.
ROUTED = {("create_ticket",): ("I want to complain about my parcel.", "My toaster arrived broken."),
          ("end_call",): ("Okay, bye now.", "That's all, goodbye."),
          ("transfer_to_human",): ("Put me through to an agent.", "I need to speak to a human."),
          ("end_call", "create_ticket"): ("That's all, and my kettle is broken.", "Nothing else, but the lamp is "
                                          "faulty. Bye.")}


def decide(url: str, names: list[str], words: str) -> dict[str, float]:
    """One router decision as `guided._pick` asks it; seconds and the prompt tokens prefilled."""
    body = {"model": LlmSettings().llm_model, "temperature": 0.0, "max_tokens": 24,
            "messages": [{"role": "system", "content": guided.router_prompt(names)},
                         {"role": "user", "content": words}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer",
                                                                        "schema": guided.decision_schema(names)}}}
    start = time.perf_counter()
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=300, headers={"Authorization": f"Bearer {API_KEY}"})
    r.raise_for_status()
    return {"s": round(time.perf_counter() - start, 2), "prefilled": r.json()["timings"]["prompt_n"]}


def router_figures(warm: bool, log_dir: Path) -> dict[str, Any]:
    """Each router question's first decision on a fresh llama-server, then a second one (other words)."""
    server = Server("llama-server", None, log_dir, warm=warm)
    try:
        server.wait()
        rows = [(decide(server.url, list(names), first), decide(server.url, list(names), second))
                for names, (first, second) in ROUTED.items()]
    finally:
        server.stop()
    firsts, seconds = [a["s"] for a, _ in rows], [b["s"] for _, b in rows]
    row = {"warm_up": warm, "first_s": firsts, "second_s": seconds,
           "first_prefilled": [a["prefilled"] for a, _ in rows], "second_prefilled": [b["prefilled"] for _, b in rows],
           "first_median_s": round(statistics.median(firsts), 2),
           "second_median_s": round(statistics.median(seconds), 2),
           "loadavg": loadavg()}
    print(json.dumps(row), flush=True)
    return row


def stream_once(url: str, settings: LlmSettings, question: str) -> dict[str, float]:
    """One streamed chat completion: seconds to the first token, total seconds, completion tokens."""
    body = {"model": settings.llm_model, "stream": True, "temperature": 0.0, "max_tokens": settings.llm_max_tokens,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": settings.llm_system_prompt},
                         {"role": "user", "content": question}]}
    start = time.perf_counter()
    first = 0.0
    chunks = 0
    usage: int | None = None
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=600,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"].get("completion_tokens")
            choices = event.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                chunks += 1
                first = first or time.perf_counter() - start
    return {"ttft_s": first, "total_s": time.perf_counter() - start, "tokens": usage or chunks}


def level(url: str, settings: LlmSettings, n: int, rounds: int) -> dict[str, Any]:
    """`n` streams at once, `rounds` times; summed tokens/s over the wall time, TTFT median and worst."""
    tokens, wall, ttfts = 0, 0.0, []
    for r in range(rounds):
        results: list[dict[str, float]] = []
        questions = [QUESTIONS[(r * n + i) % len(QUESTIONS)] for i in range(n)]
        threads = [threading.Thread(target=lambda q=q, out=results: out.append(stream_once(url, settings, q)))
                   for q in questions]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall += time.perf_counter() - start
        tokens += sum(int(x["tokens"]) for x in results)
        ttfts += [x["ttft_s"] for x in results]
    return {"streams": n, "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 2),
            "ttft_p50_s": round(statistics.median(ttfts), 2), "ttft_max_s": round(max(ttfts), 2)}


def measure(engine: str, slots: int | None, levels: list[int], rounds: int, log_dir: Path) -> list[dict[str, Any]]:
    settings = LlmSettings()
    server = Server(engine, slots, log_dir)
    try:
        server.wait()
        stream_once(server.url, settings, "Hello.")  # pages the model in; both servers get it
        rows = []
        for n in levels:
            row = {"engine": engine, **level(server.url, settings, n, rounds), "loadavg": loadavg()}
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,2,4,8", help="concurrent streams, comma-separated")
    parser.add_argument("--slots", type=int, default=None, help="llama-server slots (default: the CPU budget's)")
    parser.add_argument("--rounds", type=int, default=1, help="batches of streams per level")
    parser.add_argument("--no-analysis", action="store_true", help="skip the first-analysis figures")
    parser.add_argument("--no-router", action="store_true", help="skip the action router's figures")
    parser.add_argument("--only-router", action="store_true", help="only the action router's figures")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    print(f"cores {os.cpu_count()}, load average {loadavg()} at start", flush=True)
    if not args.only_router:
        streams_and_analysis(levels, args)
    if args.no_router:
        return
    print("\nAction router: first decision per question on a fresh llama-server vs a second one (other words)")
    for warm, row in with_and_without_warm_up(router_figures):
        print(f"  start-up warm-up {'on ' if warm else 'off'}: first {row['first_median_s']} s "
              f"(prefilled {row['first_prefilled']} tokens), second {row['second_median_s']} s (prefilled "
              f"{row['second_prefilled']}), median over {len(ROUTED)} questions")


def streams_and_analysis(levels: list[int], args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = measure("llama-cpp-python", None, levels, args.rounds, Path(tmp))
        new = measure("llama-server", args.slots, levels, args.rounds, Path(tmp))
    print(f"\nload average {loadavg()} at end\n")
    print("| streams | llama-cpp-python tok/s | TTFT p50 / max (s) | llama-server tok/s | TTFT p50 / max (s) | ratio |")
    print("|---|---|---|---|---|---|")
    for a, b in zip(base, new, strict=True):
        print(f"| {a['streams']} | {a['tokens_per_s']} | {a['ttft_p50_s']} / {a['ttft_max_s']} | "
              f"{b['tokens_per_s']} | {b['ttft_p50_s']} / {b['ttft_max_s']} | "
              f"{b['tokens_per_s'] / a['tokens_per_s']:.2f} |")
    if args.no_analysis:
        return
    print("\nFirst call analysis on a fresh llama-server vs a warm one (target: first <= 2x warm)")
    for warm, row in with_and_without_warm_up(analysis_figures):
        print(f"  start-up warm-up {'on ' if warm else 'off'}: first {row['first']['s']} s, warm "
              f"{row['warm']['s']} s, ratio {row['ratio']} (load average {row['loadavg']})")


def with_and_without_warm_up(figures: Callable[[bool, Path], dict[str, Any]]) -> Iterator[tuple[bool, dict[str, Any]]]:
    """`figures` on a fresh llama-server with its start-up warm-up on, then on another with it off."""
    with tempfile.TemporaryDirectory() as tmp:
        for warm in (True, False):
            yield warm, figures(warm, Path(tmp))


if __name__ == "__main__":
    main()
