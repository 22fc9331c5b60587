"""Small helpers for the gateway tests: WAV facts and SSE parsing."""

from __future__ import annotations

import io
import json
import time
import wave
from typing import Any

import httpx
import numpy as np


def wav_duration(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


def wav_bytes(seconds: float, rate: int = 16000, tone_hz: float | None = None) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = np.zeros_like(t) if tone_hz is None else 0.1 * np.sin(2 * np.pi * tone_hz * t)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((pcm * 32767).astype(np.int16).tobytes())
    return buf.getvalue()


def read_sse(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Read a whole SSE stream (it ends after the job's final event)."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with client.stream("GET", url, headers=headers or {}, timeout=300) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                if current:
                    out.append(current)
                current = {}
            elif line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
    return out


def post_turn(client: httpx.Client, path: str, name: str | None = None, path_query: str = "",
              **form: str) -> httpx.Response:
    with open(path, "rb") as f:
        return client.post(f"/v1/turns{path_query}", files={"file": (name or path.rsplit("/", 1)[-1], f)},
                           data=form)


def encode(pcm: np.ndarray, rate: int, codec: str, container: str) -> bytes:
    """float32 mono PCM → an encoded file (to feed the gateway every common container)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray((pcm * 32767).astype(np.int16).reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate = rate
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return buf.getvalue()


def post_chat(client: httpx.Client, text: str, **fields: Any) -> dict[str, Any]:
    r = client.post("/v1/chat", json={"text": text, **fields})
    assert r.status_code == 202, r.text
    links: dict[str, Any] = r.json()
    return links


def types(evs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in evs]


def pcm_seconds(data: bytes, rate: int) -> float:
    """Duration of raw mono s16le PCM."""
    return len(data) / 2 / rate


def decoded_seconds(data: bytes) -> float:
    """Duration of any audio file as decoded by PyAV (what a player would hear)."""
    from shared import audio

    return len(audio.decode(data)) / audio.SAMPLE_RATE


def jobs_and_queues(conn: Any) -> tuple[int, int]:
    """How many job records exist and how many rq jobs wait: a refused request must move neither."""
    from shared import queues

    n_jobs = sum(1 for k in conn.scan_iter("vq:job:*") if k.count(b":") == 2)
    return n_jobs, sum(conn.llen(f"rq:queue:{q}") for q in queues.all_names())


def wait_finished(client: httpx.Client, batch_id: str, timeout_s: float = 600) -> dict[str, Any]:
    """Poll a batch until every call is done, failed or cancelled."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        summary = client.get(f"/v1/batches/{batch_id}").json()
        if summary["finished"]:
            return dict(summary)
        time.sleep(0.5)
    raise TimeoutError(f"batch {batch_id} did not finish in {timeout_s} s")
