"""A streamed reply's audio as the caller hears it: each sentence's PCM, in sequence order, as it is ready."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import redis

from shared import audio, events, jobs
from shared.blobs import RedisBlobStore
from shared.jobs import Job

UNKNOWN_SIZE = 0xFFFFFFFF


def wav_pcm(data: bytes) -> tuple[bytes, int]:
    """A sentence's WAV → (its s16le PCM, its sample rate)."""
    pcm, rate = audio.read_wav(data)
    return pcm.tobytes(), rate


def chunk_pcm(conn: redis.Redis, job_id: str, seq: int, rate: int | None = None) -> tuple[bytes, int] | None:
    """A sentence's PCM (resampled to `rate` if given) and its rate; None if the sentence or its audio is gone."""
    chunk = jobs.get_chunk(conn, job_id, seq)
    if chunk is None or not chunk.blob_id:
        return None
    blob = RedisBlobStore(conn).get(chunk.blob_id)
    if blob is None:
        return None
    pcm, own_rate = audio.read_wav(blob[0])
    if rate is None:
        return pcm.tobytes(), own_rate
    return audio.resample(pcm, own_rate, rate).tobytes(), rate


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
            record = Job.from_wire(data["job"]) if type_ == "job.done" else None
            for chunk in record.chunks if record is not None else []:
                (self.skipped if chunk.error is not None else self.ready).add(chunk.seq)

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
