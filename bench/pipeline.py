"""Pipeline benchmark: the real stack vs the raw engines on the short English clips, in one run.

For each clip, first the raw engines run in this process with no Redis
(faster-whisper → llama.cpp over HTTP → piper), then the same clip goes
through the gateway, queues and workers. The LLM runs at temperature 0 so both
paths produce the same reply. Prints medians and p95s, and the overhead ratio
(pipeline end-to-end / sum of raw engine times), and the first reply audio (sentence-level
streaming is on, so it comes well before the end) against the same sum. Usage: `make bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.llm import prompts  # noqa: E402
from shared import models, redis_server  # noqa: E402
from tests.stack import Stack, free_port  # noqa: E402

SPEECH = REPO.parent / "shared" / "data" / "speech"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class RawEngines:
    """The engines exactly as a script would call them, with the pipeline's settings."""

    def __init__(self, llm_base_url: str, api_key: str, max_tokens: int) -> None:
        import openai
        from faster_whisper import WhisperModel
        from piper import PiperVoice

        self.whisper = WhisperModel(str(models.whisper_tiny_en()), device="cpu", compute_type="int8", cpu_threads=2)
        onnx, config = models.piper_voice()
        self.piper = PiperVoice.load(str(onnx), config_path=str(config))
        self.llm = openai.OpenAI(base_url=llm_base_url, api_key=api_key, max_retries=0)
        self.max_tokens = max_tokens

    def asr(self, path: Path) -> tuple[str, float]:
        start = time.perf_counter()
        segments, _ = self.whisper.transcribe(str(path), beam_size=5, vad_filter=True, language="en")
        text = " ".join(s.text.strip() for s in segments)
        return text, time.perf_counter() - start

    def chat(self, messages: list[Any], model: str) -> tuple[str, float]:
        start = time.perf_counter()
        stream = self.llm.chat.completions.create(
            model=model, stream=True, temperature=0.0, max_tokens=self.max_tokens, messages=messages,
        )
        reply = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
        return reply, time.perf_counter() - start

    def tts(self, text: str) -> float:
        start = time.perf_counter()
        for _chunk in self.piper.synthesize(text):
            pass
        return time.perf_counter() - start


def clips(limit: int | None) -> list[Path]:
    with (SPEECH / "MANIFEST.tsv").open(newline="") as f:
        rows = [r["file"] for r in csv.DictReader(f, delimiter="\t") if r["file"].startswith("en_short/")]
    return [SPEECH / r for r in rows][:limit]


@contextlib.contextmanager
def bench_stack(prefix: str, env: dict[str, str] | None = None) -> Iterator[tuple[Stack, RawEngines, Any, int]]:
    """The real stack on its own Redis (LLM at temperature 0, plus `env`), and the raw engines beside it."""
    from services.llm.config import LlmSettings

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    redis_proc = subprocess.Popen(redis_server.command(port, tmp / "redis"), stdout=subprocess.DEVNULL)
    llm = LlmSettings()
    stack = Stack(f"redis://127.0.0.1:{port}/0", tmp / "logs")
    try:
        stack.start(extra_env={"VQ_LLM_TEMPERATURE": "0", **(env or {})})
        wait_warm(stack)
        yield stack, RawEngines(stack.llm_base_url, llm.llm_api_key.get_secret_value(), llm.llm_max_tokens), llm, port
    finally:
        stack.stop()
        redis_proc.terminate()


def wait_warm(stack: Stack, timeout_s: float = 300) -> None:
    """Until the llm-server's warm-up is done (its wrapper logs it): a server in production is warm before its
    callers come, and the warm-up's pieces run in the gaps between a benchmark's turns otherwise."""
    log = stack.log_dir / "llm-server.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and "llm server warm" in log.read_text():
            return
        time.sleep(0.5)
    raise TimeoutError("llm-server not warm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N clips")
    ap.add_argument("--rounds", type=int, default=1, help="passes over the clips")
    args = ap.parse_args()
    with bench_stack("vq-bench-") as (stack, raw, llm, _port):
        rows = []
        with httpx.Client(base_url=stack.base_url, timeout=600) as client:
            for _ in range(args.rounds):
                for path in clips(args.limit):
                    rows.append(measure(client, raw, path, llm))
                    print(f"{path.name:45s} e2e {rows[-1]['e2e']:.2f}s raw {rows[-1]['raw_sum']:.2f}s "
                          f"ratio {rows[-1]['e2e'] / rows[-1]['raw_sum']:.3f}", flush=True)
        report(rows)


def warm(raw: RawEngines, llm: Any) -> None:
    """Leave llama.cpp's prompt cache holding just the system prompt, as between two callers.

    Without this, whichever path runs second finds its whole prompt cached and looks faster.
    """
    raw.chat(prompts.build("Hello", system=llm.llm_system_prompt, language="en"), llm.llm_model)


def measure(client: httpx.Client, raw: RawEngines, path: Path, llm: Any) -> dict[str, float]:
    _text, raw_asr = raw.asr(path)
    warm(raw, llm)
    start = time.perf_counter()
    with path.open("rb") as f:
        r = client.post("/v1/turns", files={"file": (path.name, f)}, data={"language": "en"})
    r.raise_for_status()
    audio = client.get(r.json()["audio_url"], params={"wait": 600})
    e2e = time.perf_counter() - start
    audio.raise_for_status()
    job = client.get(r.json()["status_url"]).json()
    asr = job["results"]["asr"]
    messages = prompts.build(asr["text"], system=llm.llm_system_prompt, language=asr["language"])
    warm(raw, llm)
    reply, raw_llm = raw.chat(messages, llm.llm_model)
    raw_tts = raw.tts(job["results"]["llm"]["text"])
    row = {"e2e": e2e, "raw_asr": raw_asr, "raw_llm": raw_llm, "raw_tts": raw_tts,
           "raw_sum": raw_asr + raw_llm + raw_tts,
           "same_reply": float(reply.strip() == job["results"]["llm"]["text"].strip()),
           "ttfa": float(job["ttfa_s"] or e2e)}
    for stage in ("asr", "llm", "tts"):
        row[f"wait_{stage}"] = job["stages"][stage]["queue_wait_s"]
        row[f"run_{stage}"] = job["stages"][stage]["run_s"]
    return row


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores"


def report(rows: list[dict[str, float]]) -> None:
    print(f"\n{len(rows)} turns on {machine()}")
    print(f"{'figure':28s} {'median':>9s} {'p95':>9s}")
    for key in ["wait_asr", "wait_llm", "wait_tts", "run_asr", "run_llm", "run_tts",
                "raw_asr", "raw_llm", "raw_tts", "raw_sum", "ttfa", "e2e"]:
        values = [r[key] for r in rows]
        print(f"{key + ' (s)':28s} {statistics.median(values):9.3f} {pct(values, 0.95):9.3f}")
    print(f"identical replies (pipeline vs raw, temperature 0): {int(sum(r['same_reply'] for r in rows))}/{len(rows)}")
    ratios = [r["e2e"] / r["raw_sum"] for r in rows]
    print(f"{'overhead ratio e2e/raw_sum':28s} {statistics.median(ratios):9.3f} {pct(ratios, 0.95):9.3f}")
    first = [r["ttfa"] / r["raw_sum"] for r in rows]
    print(f"{'first audio / raw_sum':28s} {statistics.median(first):9.3f} {pct(first, 0.95):9.3f}")
    print(f"\nbaseline: raw engines in-process, no Redis. median overhead ratio = {statistics.median(ratios):.3f} "
          "(quality bar: <= 1.10)")


if __name__ == "__main__":
    main()
