"""A streamed reply's audio chunks: finding them, reading their PCM, and putting them in order."""

from __future__ import annotations

import io
import json
import struct
import wave
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import redis

from shared import events, jobs
from shared.blobs import RedisBlobStore

UNKNOWN_SIZE = 0xFFFFFFFF


def chunk_record(conn: redis.Redis, job_id: str, seq: int) -> dict[str, Any] | None:
    raw = conn.hget(jobs.key(job_id), f"chunk:{seq}")
    if raw is None:
        return None
    chunk: dict[str, Any] = json.loads(raw)
    return chunk


def wav_pcm(data: bytes) -> tuple[bytes, int]:
    """A mono 16-bit WAV → (its s16le PCM, its sample rate)."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError("chunk audio is not 16-bit mono WAV")
        return w.readframes(w.getnframes()), w.getframerate()


def resample(pcm: bytes, rate: int, target: int) -> bytes:
    if rate == target or not pcm:
        return pcm
    resampler = av.AudioResampler(format="s16", layout="mono", rate=target)
    frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype=np.int16).reshape(1, -1), format="s16",
                                       layout="mono")
    frame.sample_rate = rate
    out = [f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(out).astype(np.int16).tobytes() if out else b""


def chunk_pcm(conn: redis.Redis, job_id: str, seq: int, rate: int | None = None) -> tuple[bytes, int] | None:
    """A chunk's PCM (resampled to `rate` if given) and its rate; None if the chunk or its audio is gone."""
    chunk = chunk_record(conn, job_id, seq)
    if not chunk or not chunk.get("blob_id"):
        return None
    blob = RedisBlobStore(conn).get(chunk["blob_id"])
    if blob is None:
        return None
    pcm, own_rate = wav_pcm(blob[0])
    if rate is None:
        return pcm, own_rate
    return resample(pcm, own_rate, rate), rate


def streaming_wav_header(rate: int) -> bytes:
    """A WAV header for audio of unknown length: sizes set to the maximum, decoders read to the end."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", UNKNOWN_SIZE))


@dataclass
class ChunkOrder:
    """Tracks a job's chunk events and hands out sequence numbers in order, as each becomes ready."""

    ready: set[int] = field(default_factory=set)
    skipped: set[int] = field(default_factory=set)
    next_seq: int = 0
    total: int | None = None
    ended: bool = False
    first: dict[str, Any] | None = None

    def feed(self, event: events.Event) -> None:
        _, type_, data = event
        if type_ == "tts.chunk":
            self.ready.add(int(data["seq"]))
            self.first = self.first or data
        elif type_ == "tts.chunk_failed":
            self.skipped.add(int(data["seq"]))
        elif type_ == "llm.done" and data.get("chunks") is not None:
            self.total = int(data["chunks"])
        elif type_ in events.TERMINAL:
            self.ended = True
            for chunk in (data.get("job") or {}).get("chunks", []):
                (self.skipped if chunk.get("error") else self.ready).add(int(chunk["seq"]))

    def take(self) -> list[int]:
        """The next sequence numbers to send, in order. After the job ended, gaps are skipped."""
        out: list[int] = []
        while True:
            if self.next_seq in self.ready:
                out.append(self.next_seq)
            elif self.next_seq not in self.skipped and not (self.ended and self._more_after()):
                return out
            self.next_seq += 1

    def _more_after(self) -> bool:
        return any(s > self.next_seq for s in self.ready | self.skipped)

    @property
    def finished(self) -> bool:
        if self.total is not None and self.next_seq >= self.total:
            return True
        return self.ended and not self._more_after()
