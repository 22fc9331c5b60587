"""Small helpers for the gateway tests: WAV facts and SSE parsing."""

from __future__ import annotations

import io
import json
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


def post_turn(client: httpx.Client, path: str, name: str | None = None, **form: str) -> httpx.Response:
    with open(path, "rb") as f:
        return client.post("/v1/turns", files={"file": (name or path.rsplit("/", 1)[-1], f)}, data=form)


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
