"""Live calls over /v1/realtime: voice-to-voice latency, barge-in stop latency, and 4 concurrent calls.

Against the real stack (its own Redis, LLM at temperature 0), with the raw engines measured in the same run.

- **Voice-to-voice**: each short English clip streams at real-time pace in 20 ms frames through the official
  `openai` SDK; from the clip's last voiced frame (by the same VAD, offline) to the first reply audio delta
  after the end of the clip's last turn (a pause over the silence window splits a clip into turns).
  Baseline: the VAD silence window (500 ms) + raw faster-whisper on the whole clip + raw LLM time to the first
  sentence + raw piper time for that sentence (`bench.streaming.raw_first_audio`). Target: median ratio <= 0.9.
- **Barge-in stop latency**: a long reply is asked for; 0.6 s after its first audio an utterance streams in;
  from that utterance's voice onset to the last audio delta of the cancelled reply. Target: p95 <= 400 ms.
- **Concurrent calls**: N calls at once, one clip each; voice-to-voice p50/p95 and playback stalls (a client
  playing in real time from the first delta runs dry for more than 500 ms).

Usage: `python bench/realtime.py [--limit 15] [--barge-ins 5] [--concurrency 4]` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import openai
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bench.pipeline  # noqa: E402
from bench.pipeline import bench_stack, clips, machine, pct, warm  # noqa: E402
from bench.streaming import forget_answers, raw_first_audio, show  # noqa: E402
from services.gateway.calls.vad import Endpointer  # noqa: E402
from tests.gateway.call_helpers import Events, Mic, pcm  # noqa: E402

RATE = 24000
SILENCE_WINDOW_S = 0.5
LONG_ASK = "Please tell me a long story about a lighthouse keeper and his cat, in at least ten sentences."
INTERRUPTION = "en_short/librispeech-61-70968-0000.flac"


def voice_span(path: Path) -> tuple[float, float]:
    """(onset, end) of the voice in a clip, in seconds, by the server's own VAD."""
    events = Endpointer().feed(pcm(path, 16000, tail_s=1.5))
    starts = [e.ms for e in events if e.kind == "started"]
    stops = [e.ms for e in events if e.kind == "stopped"]
    return starts[0] / 1000, stops[-1] / 1000


class Call:
    def __init__(self, base_url: str) -> None:
        self.client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0)
        self.events = Events()

    async def __aenter__(self) -> Call:
        self.manager = self.client.realtime.connect(model="gpt-realtime")
        self.conn = await self.manager.__aenter__()
        self.reader = asyncio.ensure_future(self._read())
        await self.events.type("session.created", 30)

        async def send(chunk: bytes) -> None:
            await self.conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())

        self.mic = Mic(send, RATE * 2).start()
        return self

    async def _read(self) -> None:
        try:
            async for event in self.conn:
                self.events.add(event.to_dict())
        except Exception:
            return

    async def __aexit__(self, *exc: Any) -> None:
        self.mic.stop()
        self.reader.cancel()
        await self.manager.__aexit__(None, None, None)

    def deltas(self, response_id: str) -> list[tuple[float, int]]:
        return [(t, len(base64.b64decode(e["delta"])) // 2) for t, e in self.events.timed("response.output_audio.delta")
                if e["response_id"] == response_id]


def stall_s(deltas: list[tuple[float, int]]) -> float:
    """The longest a real-time player starting at the first delta would run dry."""
    if not deltas:
        return 0.0
    buffered_until, worst = deltas[0][0], 0.0
    for at, samples in deltas:
        worst = max(worst, at - buffered_until)
        buffered_until = max(buffered_until, at) + samples / RATE
    return worst


async def final_stop(events: Events, after: float, timeout_s: float) -> int:
    """The index of the first `speech_stopped` that arrived after `after` (the clip's last voiced frame): the end
    of its last turn. A clip with a pause longer than the silence window is several turns, and the replies
    to the earlier ones (cut off by the next) would otherwise be timed against the clip's end."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for i, (t, e) in enumerate(events.items):
            if e.get("type") == "input_audio_buffer.speech_stopped" and t >= after:
                return i
        await asyncio.sleep(0.02)
    raise TimeoutError("no speech_stopped after the clip's last voiced frame")


async def one_turn(base_url: str, path: Path) -> dict[str, float]:
    _, end = voice_span(path)
    async with Call(base_url) as call:
        sent = await call.mic.play(pcm(path, RATE, tail_s=1.0))
        stop = await final_stop(call.events, sent + end, 120)
        t_first, first = await call.events.type("response.output_audio.delta", 600, after=stop)
        _, done = await call.events.wait(lambda e: e.get("type") == "response.done"
                                         and e["response"]["id"] == first["response_id"], 600)
        v2v = t_first - (sent + end)
        turns = len(call.events.of("input_audio_buffer.speech_stopped"))
        t_stop = call.events.items[stop][0]
        t_text, _ = await call.events.type("conversation.item.input_audio_transcription.completed", 60, after=stop)
        t_words, _ = await call.events.type("response.output_audio_transcript.delta", 60, after=stop)
        return {"v2v": v2v, "window": t_stop - (sent + end), "asr_after": t_text - t_stop,
                "first_words": t_words - t_text, "words_to_audio": t_first - t_words,
                "stall": stall_s(call.deltas(first["response_id"])), "turns": float(turns),
                "ok": float(done["response"]["status"] == "completed")}


async def barge_in(base_url: str, interruption: Path) -> dict[str, float]:
    onset, _ = voice_span(interruption)
    async with Call(base_url) as call:
        await call.conn.conversation.item.create(item={"type": "message", "role": "user",
                                                       "content": [{"type": "input_text", "text": LONG_ASK}]})
        await call.conn.response.create()
        _, first = await call.events.type("response.output_audio.delta", 600)
        await asyncio.sleep(0.6)
        t_voice = await call.mic.play(pcm(interruption, RATE, tail_s=1.0)) + onset
        t_started, _ = await call.events.type("input_audio_buffer.speech_started", 30)
        _, done = await call.events.wait(lambda e: e.get("type") == "response.done"
                                         and e["response"]["id"] == first["response_id"], 60)
        await asyncio.sleep(1.0)
        last = max(t for t, _ in call.deltas(first["response_id"]))
        return {"stop": last - t_voice, "speech_started": t_started - t_voice,
                "cancelled": float(done["response"]["status"] == "cancelled")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=15)
    ap.add_argument("--barge-ins", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    if os.environ.get("VQ_SPEECH_DIR"):  # a checkout not beside the data (a worktree) says where it is
        bench.pipeline.SPEECH = Path(os.environ["VQ_SPEECH_DIR"])
    paths = clips(args.limit)
    with bench_stack("vq-bench-realtime-") as (stack, raw, llm, port):
        conn = redis.Redis(port=port)
        rows = []
        for path in paths:
            row: dict[str, float] = {}
            parts: dict[str, float] = {}
            raw_ttfa, _ = raw_first_audio(raw, path, llm, "en", parts)
            row["baseline"] = SILENCE_WINDOW_S + raw_ttfa
            row.update({f"raw_{k}": v for k, v in parts.items()})
            warm(raw, llm)
            forget_answers(conn)  # the call must really run the LLM
            row.update(asyncio.run(one_turn(stack.base_url, path)))
            row["ratio"] = row["v2v"] / row["baseline"]
            rows.append(row)
            print(f"{path.name:42s} voice-to-voice {row['v2v']:.2f}s baseline {row['baseline']:.2f}s "
                  f"ratio {row['ratio']:.3f} turns {row['turns']:.0f} | "
                  f"asr {row['asr_after']:.2f} (raw {row['raw_asr']:.2f}) "
                  f"words {row['first_words']:.2f} audio {row['words_to_audio']:.2f} "
                  f"(raw llm {row['raw_llm_first']:.2f} tts {row['raw_tts_first']:.2f})", flush=True)
        interruption = paths[0].parent / Path(INTERRUPTION).name
        barges = []
        for _ in range(args.barge_ins):
            forget_answers(conn)
            barges.append(asyncio.run(barge_in(stack.base_url, interruption)))
            print(f"barge-in: stop {barges[-1]['stop']:.3f}s speech_started {barges[-1]['speech_started']:.3f}s",
                  flush=True)
        forget_answers(conn)

        async def together() -> list[dict[str, float]]:
            return list(await asyncio.gather(*(one_turn(stack.base_url, p) for p in paths[:args.concurrency])))

        concurrent = asyncio.run(together())
        eager = {o: stack.metric("gateway", "voicequeue_call_eager_replies_total", outcome=o)
                 for o in ("adopted", "dropped", "stale")}
    print(f"\nmachine: {machine()}")
    show("single call, voice-to-voice", rows, ["baseline", "v2v", "ratio", "stall"], "calls")
    # Where the time goes: the call's side from the client's event arrival times (speech_stopped,
    # transcription.completed, first transcript delta, first audio delta); the baseline's three raw terms.
    show("single call, stages", rows, ["window", "asr_after", "first_words", "words_to_audio", "raw_asr",
                                       "raw_llm_first", "raw_tts_first"], "calls")
    show("barge-in", barges, ["stop", "speech_started", "cancelled"], "calls")
    show(f"{args.concurrency} concurrent calls", concurrent, ["v2v", "stall"], "calls")
    print(f"\nvoice-to-voice / (silence window + raw ASR + raw LLM first sentence + raw TTS of it): median "
          f"{statistics.median(r['ratio'] for r in rows):.3f} (target <= 0.9)")
    print(f"barge-in stop latency p95 {pct([b['stop'] for b in barges], 0.95) * 1000:.0f} ms (target <= 400 ms); "
          f"{sum(b['cancelled'] for b in barges):.0f}/{len(barges)} replies cancelled mid-production")
    print("eager replies (started at a pause, before the silence window ended the turn): "
          + ", ".join(f"{o} {n:.0f}" for o, n in eager.items()))
    stalls = sum(1 for r in concurrent if r["stall"] > 0.5)
    p50 = statistics.median(r["v2v"] for r in concurrent)
    print(f"{args.concurrency} concurrent calls: voice-to-voice p50 {p50:.2f}s"
          f" p95 {pct([r['v2v'] for r in concurrent], 0.95):.2f}s; {stalls} with a playback stall > 500 ms")


if __name__ == "__main__":
    main()
