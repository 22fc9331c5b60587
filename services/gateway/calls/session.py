"""The call-session core: one live call, whatever carries it (OpenAI Realtime WebSocket, Twilio Media Streams).

Adapters turn their wire messages into calls on `CallSession` (`append_audio`, `commit`, `create_response`,
`truncate`, `audio_played`, …) and turn what it emits back into wire messages. It emits OpenAI Realtime
server events (GA names), plus two internal ones adapters may use and must not forward:
`x.sentence_end` (a sentence's audio has all been sent: Twilio puts a mark there) and `x.interrupt`
(the caller barged in: drop buffered audio; Twilio's `clear`). When a reply transfers the caller to a
person it also sends `call.transfer` (target, reason and the call so far) before the call ends.

The socket holder does framing, VAD and pacing only. The caller's speech goes to ASR in pieces cut at
short pauses while they are still talking; at the end of their turn a `chat` job (llm → tts, streamed
sentences) answers with the call's history, all through the live queues (`pipeline`).

What the caller heard: a reply's sentences are recorded with their exact audio length, and playback is
taken to run in real time from the first audio sent, corrected by Twilio's marks or by the client's
`conversation.item.truncate`. On a barge-in the history keeps only the heard part.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import unicodedata
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from services.gateway.calls import metrics, pipeline, protocol, registry, store
from services.gateway.calls.formats import PCM24, VAD_RATE, AudioFormat, FormatError, Resampler, container, parse
from services.gateway.calls.protocol import ProtocolError
from services.gateway.calls.vad import Endpointer, VadParams
from services.gateway.config import GatewaySettings
from shared.jobs import JobStatus, ToolCallRecord

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
MIN_COMMIT_MS = 100
DELTA_MS = 200  # reply audio goes out in pieces of at most this much
ACTIONS = {"transfer": "transfer", "end_call": "end_call"}  # a reply's action -> the call's end reason


@dataclass
class Sentence:
    text: str
    start_ms: float
    duration_ms: float
    word_ends_ms: list[float] | None = None  # from the TTS engine; else the cut is placed by characters

    def heard(self, heard_ms: float) -> str:
        """What of this sentence was heard when playback stopped at `heard_ms` (of the whole reply)."""
        if self.word_ends_ms is None:
            return _cut(self.text, (heard_ms - self.start_ms) / self.duration_ms)
        words = self.text.split()
        n = sum(1 for end in self.word_ends_ms if self.start_ms + end <= heard_ms + 1)
        return " ".join(words[:n]) + ("…" if n < len(words) else "") if n else ""


@dataclass
class Item:
    """One conversation item: what the caller said, or what the bot said (and how much of it was heard)."""

    id: str
    role: str
    text: str
    at: float
    audio: bool = False
    sentences: list[Sentence] = field(default_factory=list)
    sent_ms: float = 0.0
    heard_ms: float | None = None  # None: all of it (or not audio)
    interrupted: bool = False

    def heard_text(self) -> str:
        """The text the caller heard: whole sentences played, and the played share of the one cut off."""
        if self.heard_ms is None or not self.sentences:
            return self.text
        parts = []
        for s in self.sentences:
            if s.start_ms + s.duration_ms <= self.heard_ms + 1:
                parts.append(s.text)
            elif s.start_ms < self.heard_ms:
                parts.append(s.heard(self.heard_ms))
        return " ".join(p for p in parts if p).strip()


def _cut(text: str, share: float) -> str:
    """The first `share` of a sentence, ended at a word boundary where words are spaced (Chinese has none).
    Only used inside the one sentence being played when the caller cut in; whole sentences use their
    recorded audio lengths."""
    n = int(len(text) * max(0.0, min(share, 1.0)))
    head = text[:n]
    spaced = any(unicodedata.category(c) == "Zs" for c in text)
    mid_word = n < len(text) and not (text[n].isspace() or unicodedata.category(text[n]).startswith("P"))
    if spaced and mid_word:
        head = head[: head.rfind(" ")] if " " in head else ""
    return f"{head.rstrip()}…" if head.strip() else ""


@dataclass
class Config:
    instructions: str | None = None
    voice: str | None = None
    language: str | None = None
    input_format: AudioFormat = PCM24
    output_format: AudioFormat = PCM24
    vad: VadParams | None = field(default_factory=VadParams)  # None: turn detection off (client commits)
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_s: float | None = None


@dataclass
class Response:
    id: str
    item: Item
    job_id: str | None = None
    task: asyncio.Task[None] | None = None
    done: bool = False
    first_audio_at: float | None = None
    play_base_ms: float = 0.0  # playback position known at `play_base_at` (first audio, or a Twilio mark)
    play_base_at: float | None = None
    turn: dict[str, Any] | None = None

    def played_ms(self, now: float) -> float:
        if self.play_base_at is None:
            return 0.0
        return min(self.item.sent_ms, self.play_base_ms + (now - self.play_base_at) * 1000)


@dataclass(eq=False)
class Eager:
    """A reply started at a pause inside the caller's speech, before the silence window has ended their turn.
    It is used only if the turn ends at that same pause with the same words and history (`key`); if the caller
    goes on, it is cancelled."""

    pause_ms: int
    piece: asyncio.Task[pipeline.Transcript] | None  # the audio since the last cut, transcribed on spec
    piece_end: int  # where that piece ends (samples on the endpointer's clock)
    task: asyncio.Task[tuple[str, tuple[Any, ...]] | None] | None = None  # (reply job id, key) once submitted


class CallSession:
    def __init__(self, *, conn: redis.Redis, aconn: aioredis.Redis, settings: GatewaySettings, tenant: str,
                 send: Send, transport: str, model: str = "voicequeue-realtime") -> None:
        self.conn, self.aconn, self.settings, self.tenant = conn, aconn, settings, tenant
        self._send, self.transport, self.model = send, transport, model
        self.id = protocol.new_id("call")  # also the Realtime session's id, so a client can fetch the record
        self.config = Config(voice=settings.call_voice)
        if self.config.vad is not None:
            self.config.vad.min_speech_ms = settings.call_min_speech_ms
            self.config.vad.pause_ms = settings.call_asr_pause_ms
        self.started_at = time.time()
        self.items: list[Item] = []
        self.response: Response | None = None
        self.closed = asyncio.Event()
        self.end_reason: str | None = None
        self.last_activity = time.monotonic()
        self.turns: list[dict[str, Any]] = []
        self.barge_ins = 0
        self.false_starts = 0
        self.dtmf: list[dict[str, Any]] = []
        self.transferred: dict[str, Any] | None = None
        self.cost: dict[str, float] = {"audio_in_s": 0.0, "audio_out_s": 0.0}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._jobs: set[str] = set()  # transcription pieces submitted and not yet answered
        self.eager: Eager | None = None  # started at the current utterance's latest pause
        self._eagers: set[Eager] = set()  # every eager reply not yet sent or discarded
        self._reset_input()

    # ---- audio in ---------------------------------------------------------------------------------------

    def _reset_input(self) -> None:
        fmt = self.config.input_format
        self.resampler = Resampler(fmt.rate, VAD_RATE)
        self.endpointer = Endpointer(self.config.vad or VadParams())
        self.stream16 = bytearray()  # 16 kHz audio since `stream_start` (samples on the endpointer's clock)
        self.stream_start = 0
        self.buffer_in_ms = 0.0  # audio appended since the last commit or clear, in the caller's format
        self.utterance: dict[str, Any] | None = None

    def _samples_now(self) -> int:
        return self.stream_start + len(self.stream16) // 2

    def _slice(self, start: int, end: int) -> bytes:
        a, b = max(start - self.stream_start, 0), max(end - self.stream_start, 0)
        return bytes(self.stream16[2 * a: 2 * b])

    def _trim(self) -> None:
        """Between utterances keep only the prefix padding the next one may need."""
        keep = VAD_RATE  # 1 s ≥ any sane prefix_padding_ms
        extra = len(self.stream16) // 2 - keep
        if extra > 0 and self.utterance is None:
            del self.stream16[: 2 * extra]
            self.stream_start += extra

    async def append_audio(self, data: bytes, event_id: str | None = None) -> None:
        fmt = self.config.input_format
        if (kind := container(data)) is not None:
            raise ProtocolError("invalid_audio_format", f"this append holds {kind}, but the session declared raw "
                                f"{fmt.beta()} at {fmt.rate} Hz: send the samples only, in that format", event_id,
                                "audio")
        if fmt.codec == "pcm16" and len(data) % 2:
            raise ProtocolError("invalid_audio", f"{fmt.beta()} audio must be whole 16-bit samples (an even "
                                "number of bytes)", event_id, "audio")
        self.buffer_in_ms += fmt.duration_ms(len(data))
        self.cost["audio_in_s"] += fmt.duration_ms(len(data)) / 1000
        pcm16 = self.resampler.feed(fmt.to_pcm(data))
        self.stream16 += pcm16
        if self.config.vad is None:
            return
        for event in self.endpointer.feed(pcm16):
            await self._on_vad(event.kind, event.ms, event.duration_ms)
        self._trim()

    async def _on_vad(self, kind: str, ms: int, duration_ms: int) -> None:
        vad = self.config.vad
        assert vad is not None
        if kind == "false_start":
            self.false_starts += 1
            metrics.FALSE_STARTS.labels(self.transport).inc()
            await self._save()
            return
        if kind == "started":
            self._drop_eager("dropped")
            self.last_activity = time.monotonic()
            start = max(ms - vad.prefix_padding_ms, 0) * VAD_RATE // 1000
            item_id = protocol.new_id("item")
            self.utterance = {"item_id": item_id, "start_ms": ms, "piece_start": start, "pieces": [],
                              "started_at": time.time()}
            await self.emit("input_audio_buffer.speech_started", audio_start_ms=ms, item_id=item_id)
            if self.config.interrupt_response:
                await self.interrupt("turn_detected")
            return
        if self.utterance is None:
            return
        if kind == "pause":
            # Cut here: if this pause turns out to be the end of the turn, its last piece is already being
            # transcribed while the silence window runs out.
            length = ms * VAD_RATE // 1000 - self.utterance["piece_start"]
            if length >= self.settings.call_asr_piece_min_s * VAD_RATE:
                self._submit_piece(ms + vad.pause_ms // 2)
                self.utterance["cut_at_pause_ms"] = ms
            if self.settings.call_eager_reply and self.config.create_response and await self._eager_allowed():
                self._start_eager(ms + vad.pause_ms // 2, ms)
            return
        if kind == "resumed":
            self._drop_eager("dropped")
            return
        if kind == "stopped":
            self.last_activity = time.monotonic()
            utterance = self.utterance
            self._adopt_eager_piece(ms)
            if utterance.get("cut_at_pause_ms") != ms:  # else nothing but silence followed the last cut
                self._submit_piece(ms + min(vad.silence_duration_ms, 300))
            self.utterance = None
            utterance["end_ms"] = ms
            utterance["stopped_at"] = time.monotonic() - vad.silence_duration_ms / 1000
            await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=ms, item_id=utterance["item_id"])
            await self._commit_utterance(utterance, auto=True)

    def _submit_piece(self, end_ms: int) -> None:
        assert self.utterance is not None
        end = min(end_ms * VAD_RATE // 1000, self._samples_now())
        pcm = self._slice(self.utterance["piece_start"], end)
        self.utterance["piece_start"] = end
        if len(pcm) < VAD_RATE // 10 * 2:
            return
        self.utterance["pieces"].append(self._spawn(self._transcribe(pcm)))

    async def _transcribe(self, pcm16k: bytes) -> pipeline.Transcript:
        job_id = await self._submit(lambda: pipeline.submit_piece(
            self.conn, self.settings, pcm16k, tenant=self.tenant, language=self.config.language, call_id=self.id))
        self._jobs.add(job_id)
        try:
            return await pipeline.transcript(self.aconn, job_id, self.settings.call_step_timeout_s)
        except asyncio.CancelledError:
            self._cancel_job(job_id)  # nobody will read it
            raise
        finally:
            self._jobs.discard(job_id)

    # ---- eager end of turn ------------------------------------------------------------------------------

    async def _eager_allowed(self) -> bool:
        """Only while the live queues keep up: a speculative transcription or reply in a backlog delays other
        callers' real turns (measured: 4 calls at once went from 20 s to 27 s voice-to-voice p50)."""
        try:
            backlog = await pipeline.live_backlog(self.aconn)
        except Exception:  # Redis trouble: no speculation, the turn's own path reports it
            return False
        if backlog - len(self._jobs) > self.settings.call_eager_max_backlog:  # others' jobs, not this call's pieces
            self._drop_eager("dropped")
            metrics.EAGER.labels(self.transport, "busy").inc()
            return False
        return True

    def _start_eager(self, end_ms: int, pause_ms: int) -> None:
        """At a pause: transcribe what was not cut yet and submit the reply the turn would get if it ended here."""
        assert self.utterance is not None
        self._drop_eager("dropped")
        utterance = self.utterance
        end = min(end_ms * VAD_RATE // 1000, self._samples_now())
        piece = None
        if end - utterance["piece_start"] >= VAD_RATE // 10:
            piece = self._spawn(self._transcribe(self._slice(utterance["piece_start"], end)))
        eager = Eager(pause_ms, piece, end)
        self._eagers.add(eager)
        pieces = [*utterance["pieces"], *([piece] if piece else [])]
        # The history now, before this utterance is an item: once committed, its words would count twice.
        eager.task = self._spawn(self._eager_reply(pieces, *self.history()))
        self.eager = eager

    async def _eager_reply(self, pieces: list[asyncio.Task[pipeline.Transcript]], earlier: str,
                           history: list[dict[str, str]]) -> tuple[str, tuple[Any, ...]] | None:
        # Shielded: dropping this reply must not cancel the pieces, which stay the utterance's.
        words = " ".join(t.text for t in [await asyncio.shield(p) for p in pieces] if t.text).strip()
        if not words:
            return None
        text = f"{earlier} {words}".strip()
        key = self._reply_key(text, history)
        try:
            job_id = await self._submit(lambda: pipeline.submit_reply(
                self.conn, self.settings, text, history=history, tenant=self.tenant, language=self.config.language,
                voice=self.config.voice, call_id=self.id, instructions=self.config.instructions))
        except asyncio.CancelledError:
            raise
        except Exception:  # refused (a full queue, Redis): the turn's own reply tries again at its end
            log.debug("eager reply not submitted", exc_info=True, extra={"call_id": self.id})
            return None
        return job_id, key

    def _reply_key(self, text: str, history: list[dict[str, str]]) -> tuple[Any, ...]:
        c = self.config
        return text, repr(history), c.instructions, c.voice, c.language

    def _adopt_eager_piece(self, stop_ms: int) -> None:
        """The turn ended at the pause the eager reply started at: its piece is the utterance's last."""
        eager, utterance = self.eager, self.utterance
        if eager is None or utterance is None or eager.pause_ms != stop_ms:
            self._drop_eager("dropped")
            return
        if eager.piece is not None:
            utterance["pieces"].append(eager.piece)
        utterance["piece_start"] = max(utterance["piece_start"], eager.piece_end)
        utterance["cut_at_pause_ms"] = stop_ms
        utterance["eager"], self.eager = eager, None

    def _drop_eager(self, outcome: str) -> None:
        eager, self.eager = self.eager, None
        if eager is None:
            return
        if eager.piece is not None:
            eager.piece.cancel()
        self._discard_eager_reply(eager, outcome)

    def _discard_eager_reply(self, eager: Eager, outcome: str) -> None:
        self._eagers.discard(eager)
        task = eager.task
        if task is None:
            return
        if not task.done():
            task.cancel()  # not submitted yet, or being submitted: `_submit` cancels the job it makes
        elif not task.cancelled() and task.exception() is None and (result := task.result()) is not None:
            self._cancel_job(result[0])
        else:
            return
        metrics.EAGER.labels(self.transport, outcome).inc()

    async def _eager_job(self, eager: Eager, text: str, history: list[dict[str, str]]) -> str | None:
        """The eager reply's job id if it answers exactly (`text`, `history`) as things stand now; else cancel it."""
        task = eager.task
        if task is None:
            return None
        await asyncio.wait({task})
        if task.cancelled() or task.exception() is not None or (result := task.result()) is None:
            return None
        job_id, key = result
        if key != self._reply_key(text, history):
            self._discard_eager_reply(eager, "stale")
            return None
        self._eagers.discard(eager)
        metrics.EAGER.labels(self.transport, "adopted").inc()
        return job_id

    async def _submit(self, submit: Callable[[], str]) -> str:
        """Submit a job from a thread. If the call's task is cancelled meanwhile (a barge-in, the call ending),
        the job, which exists once the thread is done, is cancelled then: none is left behind."""
        future = asyncio.ensure_future(asyncio.to_thread(submit))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._cancel_orphan)
            raise

    def _cancel_orphan(self, future: asyncio.Future[str]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._cancel_job(future.result())

    def _cancel_job(self, job_id: str) -> None:
        # Not a call task: ending the call cancels those, and this must still run.
        asyncio.get_running_loop().run_in_executor(None, pipeline.cancel, self.conn, self.settings, job_id)

    async def commit(self, event_id: str | None = None) -> None:
        """input_audio_buffer.commit: the audio since the last commit is a user turn (turn detection off, or
        the client decides)."""
        if self.buffer_in_ms < MIN_COMMIT_MS:
            raise ProtocolError("input_audio_buffer_commit_empty",
                                f"buffer too small: expected at least {MIN_COMMIT_MS}ms of audio, but buffer only has "
                                f"{self.buffer_in_ms:.2f}ms of audio", event_id)
        start = self._samples_now() - int(self.buffer_in_ms * VAD_RATE / 1000)
        utterance = self.utterance or {"item_id": protocol.new_id("item"), "start_ms": start * 1000 // VAD_RATE,
                                       "piece_start": start, "pieces": [], "started_at": time.time()}
        self.utterance = utterance
        self._drop_eager("dropped")
        self._submit_piece(self._samples_now() * 1000 // VAD_RATE + 1)
        self.utterance = None
        self._drop_audio()
        utterance["end_ms"] = self._samples_now() * 1000 // VAD_RATE
        utterance["stopped_at"] = time.monotonic()
        await self._commit_utterance(utterance, auto=False)

    async def _commit_utterance(self, utterance: dict[str, Any], auto: bool) -> None:
        self.buffer_in_ms = 0.0
        previous = self.items[-1].id if self.items else None
        item = Item(utterance["item_id"], "user", "", time.time(), audio=True)
        self.items.append(item)
        await self.emit("input_audio_buffer.committed", item_id=item.id, previous_item_id=previous)
        self._spawn(self._finish_utterance(utterance, item, auto))

    async def _finish_utterance(self, utterance: dict[str, Any], item: Item, auto: bool) -> None:
        pieces = [await p for p in utterance["pieces"]]
        text = " ".join(p.text for p in pieces if p.text).strip()
        language = next((p.language for p in pieces if p.language), None)
        item.text = text
        asr_done = time.monotonic()
        await self.emit("conversation.item.input_audio_transcription.completed", item_id=item.id, content_index=0,
                        transcript=text, language=language)
        turn = {"user": {"item_id": item.id, "text": text, "audio_start_ms": utterance["start_ms"],
                         "audio_end_ms": utterance.get("end_ms"), "at": utterance["started_at"]},
                "asr_pieces": len(pieces),
                "latency": {"asr_after_end_s": round(asr_done - utterance["stopped_at"], 3)}}
        self.turns.append(turn)
        eager = utterance.get("eager")
        if not text:
            turn["skipped"] = "no words recognised"
            if eager is not None:
                self._discard_eager_reply(eager, "stale")
            await self._save()
            return
        if auto and self.config.create_response:
            await self.create_response(turn=turn, speech_end=utterance["stopped_at"], eager=eager)
        else:
            if eager is not None:
                self._discard_eager_reply(eager, "stale")
            await self._save()

    async def clear(self) -> None:
        self._drop_eager("dropped")
        self.buffer_in_ms = 0.0
        self.utterance = None
        self._drop_audio()
        await self.emit("input_audio_buffer.cleared")

    def _drop_audio(self) -> None:
        """Forget the audio kept so far (committed or cleared); the stream's clock goes on."""
        self.stream_start = self._samples_now()
        self.stream16.clear()

    # ---- conversation -----------------------------------------------------------------------------------

    async def add_item(self, role: str, text: str) -> None:
        previous = self.items[-1].id if self.items else None
        item = Item(protocol.new_id("item"), role, text, time.time())
        self.items.append(item)
        await self.emit("conversation.item.added", previous_item_id=previous,
                        item=protocol.message_item(item.id, role, text, audio=False))
        await self.emit("conversation.item.done", previous_item_id=previous,
                        item=protocol.message_item(item.id, role, text, audio=False))
        if role == "user":
            self.turns.append({"user": {"item_id": item.id, "text": text, "at": item.at}, "latency": {}})

    def history(self) -> tuple[str, list[dict[str, str]]]:
        """(the caller's new words, the messages before them) for the next reply: the heard part of each
        reply, the caller's words even of turns they cut off, the last `call_history_turns` exchanges."""
        messages = []
        for item in self.items:
            text = item.heard_text() if item.role == "assistant" else item.text
            if text and item.role in ("user", "assistant"):
                messages.append({"role": item.role, "content": text})
        new: list[str] = []
        while messages and messages[-1]["role"] == "user":
            new.insert(0, messages.pop()["content"])
        # The LLM expects alternating turns: merge neighbours of one role.
        merged: list[dict[str, str]] = []
        for m in messages:
            if merged and merged[-1]["role"] == m["role"]:
                merged[-1]["content"] += " " + m["content"]
            else:
                merged.append(dict(m))
        limit = 2 * max(self.settings.call_history_turns, 0)
        return " ".join(new).strip(), merged[-limit:] if limit else []

    async def create_response(self, turn: dict[str, Any] | None = None, speech_end: float | None = None,
                              speak: str | None = None, eager: Eager | None = None) -> None:
        """Answer the caller's latest words (or speak `speak` as it is: greeting, goodbye). `eager`: a reply
        already started at the pause the turn ended at, used if it answers the same words and history."""
        await self.interrupt("superseded")
        text, history = self.history()
        if speak is None and not text:
            if eager is not None:
                self._discard_eager_reply(eager, "stale")
            await self.emit_error("no_input", "there is nothing to respond to: the last item is not the caller's")
            return
        job_id = None
        if eager is not None:
            job_id = await self._eager_job(eager, text, history) if speak is None else None
            if turn is not None:
                turn["eager"] = job_id is not None
        if turn is None and speak is None and self.turns and "assistant" not in self.turns[-1]:
            turn = self.turns[-1]  # the caller's typed words (conversation.item.create) this answers
        item = Item(protocol.new_id("item"), "assistant", "", time.time(), audio=True)
        response = Response(protocol.new_id("resp"), item, job_id=job_id, turn=turn)
        self.response = response
        self.items.append(item)
        await self.emit("response.created", response=protocol.response(response.id, "in_progress", []))
        await self.emit("response.output_item.added", response_id=response.id, output_index=0,
                        item=protocol.message_item(item.id, "assistant", None, audio=True, status="in_progress"))
        response.task = self._spawn(self._run_response(response, text, history, speech_end, speak))

    async def _run_response(self, response: Response, text: str, history: list[dict[str, str]],
                            speech_end: float | None, speak: str | None) -> None:
        item, fmt = response.item, self.config.output_format
        ids = {"response_id": response.id, "item_id": item.id, "output_index": 0, "content_index": 0}
        submitted = time.monotonic()
        if response.job_id is None:  # (else the eager reply, under way already)
            response.job_id = await self._submit((lambda: pipeline.submit_reply(
                self.conn, self.settings, text, history=history, tenant=self.tenant, language=self.config.language,
                voice=self.config.voice, call_id=self.id, instructions=self.config.instructions)) if speak is None
                else (lambda: pipeline.submit_speech(
                    self.conn, self.settings, speak, tenant=self.tenant, language=self.config.language,
                    voice=self.config.voice, call_id=self.id)))
        if response.turn is not None:
            response.turn["reply_job_id"] = response.job_id
        await self._save()
        finished: pipeline.Finished | None = None
        async for event in pipeline.reply_events(self.conn, self.aconn, response.job_id, fmt.rate,
                                                 self.settings.call_step_timeout_s):
            if isinstance(event, pipeline.Delta):
                item.text += event.text
                await self.emit("response.output_audio_transcript.delta", delta=event.text, **ids)
            elif isinstance(event, pipeline.Sentence):
                await self._send_sentence(response, event, ids)
                if speech_end is not None and response.turn is not None and "voice_to_voice_s" not in \
                        response.turn["latency"]:
                    v2v = time.monotonic() - speech_end
                    response.turn["latency"]["voice_to_voice_s"] = round(v2v, 3)
                    response.turn["latency"]["reply_first_audio_s"] = round(time.monotonic() - submitted, 3)
                    metrics.VOICE_TO_VOICE.labels(self.transport).observe(v2v)
            else:
                finished = event
        if response.done:  # a barge-in, a cancel or the call's end got here first: it has said so
            return
        response.done = True
        if finished is None or finished.status != JobStatus.DONE:
            reason = finished.reason if finished else "no_result"
            self._record_reply(response, "failed")
            await self.emit("response.done", response=protocol.response(
                response.id, "failed", [], reason=reason or "failed"))
            await self._save()
            return
        if speak is not None and not item.text:
            item.text = speak
        self._record_reply(response, "completed")  # before any await: a barge-in from here on updates it
        if finished.knowledge and response.turn is not None:
            response.turn["knowledge"] = finished.knowledge.wire()  # which passages answered: kept, never spoken
        if finished.tool_calls and response.turn is not None:
            response.turn["tool_calls"] = [c.wire() for c in finished.tool_calls]
            response.turn["action"] = finished.action
        for c, amount in (finished.cost or {}).items():
            self.cost[c] = self.cost.get(c, 0.0) + amount
        await self.emit("response.output_audio.done", **ids)
        await self.emit("response.output_audio_transcript.done", transcript=item.text, **ids)
        done_item = protocol.message_item(item.id, "assistant", item.text, audio=True)
        await self.emit("response.output_item.done", response_id=response.id, output_index=0, item=done_item)
        usage = {"input_tokens": int(self.cost.get("prompt_tokens", 0)),
                 "output_tokens": int(self.cost.get("completion_tokens", 0))}
        await self.emit("response.done", response=protocol.response(response.id, "completed", [done_item],
                                                                     usage=usage))
        await self._save()
        if finished.action in ACTIONS and speak is None:
            self._spawn(self._after_action(response, finished.action, finished.tool_calls))

    async def _send_sentence(self, response: Response, sentence: pipeline.Sentence, ids: dict[str, Any]) -> None:
        fmt = self.config.output_format
        item = response.item
        step = int(fmt.rate * DELTA_MS / 1000) * 2
        start_ms = item.sent_ms
        for i in range(0, len(sentence.pcm), step):
            if response.done and response is not self.response:
                return
            await self.emit("response.output_audio.delta",
                            delta=base64.b64encode(fmt.from_pcm(sentence.pcm[i:i + step])).decode(), **ids)
            if response.first_audio_at is None:
                response.first_audio_at = response.play_base_at = time.monotonic()
        item.sent_ms += sentence.duration_ms
        ends = sentence.word_ends_s
        item.sentences.append(Sentence(sentence.text, start_ms, sentence.duration_ms,
                                       None if ends is None else [1000 * t for t in ends]))
        self.cost["audio_out_s"] += sentence.duration_ms / 1000
        await self.emit("x.sentence_end", item_id=item.id, audio_end_ms=int(item.sent_ms))

    def _record_reply(self, response: Response, status: str) -> None:
        item = response.item
        entry = {"item_id": item.id, "text": item.text, "heard_text": item.heard_text(), "status": status,
                 "audio_ms": round(item.sent_ms), "heard_ms": None if item.heard_ms is None else round(item.heard_ms),
                 "interrupted": item.interrupted, "job_id": response.job_id, "at": item.at}
        if response.turn is not None:
            response.turn["assistant"] = entry
        else:
            self.turns.append({"assistant": entry, "latency": {}})

    async def interrupt(self, reason: str) -> None:
        """Stop the current reply: cancel its job if it is still being produced, mark what was heard, and tell
        the adapter to drop audio not yet played."""
        response = self.response
        if response is None:
            return
        now = time.monotonic()
        playing = response.play_base_at is not None and response.played_ms(now) < response.item.sent_ms - 1
        if response.done and not playing:
            self.response = None
            return
        self.response = None
        item = response.item
        item.heard_ms = response.played_ms(now)
        item.interrupted = True
        if reason == "turn_detected":
            self.barge_ins += 1
            metrics.BARGE_INS.labels(self.transport).inc()
        await self.emit("x.interrupt", item_id=item.id, audio_end_ms=int(item.heard_ms))
        if not response.done:
            response.done = True
            if response.task is not None:
                response.task.cancel()
            if response.job_id is not None:
                await asyncio.to_thread(pipeline.cancel, self.conn, self.settings, response.job_id)
            await self.emit("response.done", response=protocol.response(response.id, "cancelled", [],
                                                                         reason=reason))
            self._record_reply(response, "cancelled")
        elif response.turn is not None and "assistant" in response.turn:
            response.turn["assistant"].update(heard_text=item.heard_text(), heard_ms=round(item.heard_ms),
                                              interrupted=True)
        await self._save()

    async def cancel_response(self) -> None:
        if self.response is None or self.response.done:
            await self.emit_error("response_cancel_not_active", "there is no response in progress to cancel")
            return
        await self.interrupt("client_cancelled")

    async def truncate(self, item_id: str, audio_end_ms: int, event_id: str | None = None) -> None:
        item = next((i for i in self.items if i.id == item_id), None)
        if item is None or item.role != "assistant":
            raise ProtocolError("item_not_found", f"no assistant item with id {item_id!r}", event_id, "item_id")
        if audio_end_ms > item.sent_ms + 1:
            raise ProtocolError("invalid_value", f"audio_end_ms {audio_end_ms} is past the end of the item's audio "
                                f"({int(item.sent_ms)} ms)", event_id, "audio_end_ms")
        item.heard_ms = float(audio_end_ms)
        item.interrupted = item.interrupted or audio_end_ms < item.sent_ms - 1
        for turn in self.turns:
            if (turn.get("assistant") or {}).get("item_id") == item_id:
                turn["assistant"].update(heard_text=item.heard_text(), heard_ms=audio_end_ms)
        await self.emit("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=audio_end_ms)
        await self._save()

    def audio_played(self, item_id: str, audio_end_ms: float) -> None:
        """A playback report (Twilio's mark echo): the caller has heard `item_id` up to `audio_end_ms`."""
        response = self.response
        if response is not None and response.item.id == item_id:
            response.play_base_ms, response.play_base_at = audio_end_ms, time.monotonic()
            if response.done and audio_end_ms >= response.item.sent_ms - 1:
                self.response = None  # all of it was heard

    # ---- session ----------------------------------------------------------------------------------------

    def update(self, session: dict[str, Any], event_id: str | None = None) -> None:
        """session.update in GA or beta shape. Raises ProtocolError (nothing changed) on a bad value."""
        config = Config(**{**self.config.__dict__})
        audio: dict[str, Any] = session["audio"] if isinstance(session.get("audio"), dict) else {}
        audio_in: dict[str, Any] = audio["input"] if isinstance(audio.get("input"), dict) else {}
        audio_out: dict[str, Any] = audio["output"] if isinstance(audio.get("output"), dict) else {}
        try:
            if "format" in audio_in or "input_audio_format" in session:
                config.input_format = parse(audio_in.get("format", session.get("input_audio_format")))
            if "format" in audio_out or "output_audio_format" in session:
                config.output_format = parse(audio_out.get("format", session.get("output_audio_format")))
        except FormatError as exc:
            raise ProtocolError("invalid_audio_format", str(exc), event_id, "session.audio.format") from exc
        if "instructions" in session:
            config.instructions = self._instructions(session["instructions"], event_id)
        voice = audio_out.get("voice", session.get("voice"))
        if isinstance(voice, str) and voice:
            config.voice = voice if voice in self.settings.gateway_voices else config.voice
        transcription = audio_in.get("transcription", session.get("input_audio_transcription"))
        if isinstance(transcription, dict) and transcription.get("language"):
            config.language = str(transcription["language"])
        if "turn_detection" in audio_in or "turn_detection" in session:
            self._turn_detection(config, audio_in.get("turn_detection", session.get("turn_detection")), event_id)
        rates_changed = config.input_format != self.config.input_format
        self.config = config
        if rates_changed:
            self.resampler = Resampler(config.input_format.rate, VAD_RATE)

    def _instructions(self, value: Any, event_id: str | None) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ProtocolError("invalid_value", "instructions must be a string", event_id, "session.instructions")
        if len(value) > self.settings.call_max_instructions_chars:
            raise ProtocolError("invalid_value", f"instructions are {len(value)} characters long; at most "
                                f"{self.settings.call_max_instructions_chars} are accepted", event_id,
                                "session.instructions")
        return value.strip() or None

    def set_formats(self, input_format: AudioFormat, output_format: AudioFormat) -> None:
        self.config.input_format, self.config.output_format = input_format, output_format
        self.resampler = Resampler(input_format.rate, VAD_RATE)

    def _turn_detection(self, config: Config, value: Any, event_id: str | None) -> None:
        if value is None:
            config.vad = None
            return
        if not isinstance(value, dict) or value.get("type", "server_vad") != "server_vad":
            raise ProtocolError("invalid_turn_detection", "turn_detection must be null or {'type': 'server_vad', …}",
                                event_id, "session.turn_detection")
        vad = VadParams(min_speech_ms=self.settings.call_min_speech_ms, pause_ms=self.settings.call_asr_pause_ms)
        current = config.vad or vad
        try:
            vad.threshold = float(value.get("threshold", current.threshold))
            vad.prefix_padding_ms = int(value.get("prefix_padding_ms", current.prefix_padding_ms))
            vad.silence_duration_ms = int(value.get("silence_duration_ms", current.silence_duration_ms))
        except (TypeError, ValueError) as exc:
            raise ProtocolError("invalid_turn_detection", f"bad turn_detection value: {exc}", event_id,
                                "session.turn_detection") from exc
        if not 0 < vad.threshold < 1 or vad.silence_duration_ms < 64 or not 0 <= vad.prefix_padding_ms <= 1000:
            raise ProtocolError("invalid_turn_detection", "threshold must be in (0, 1), silence_duration_ms ≥ 64 and "
                                "prefix_padding_ms in [0, 1000]", event_id, "session.turn_detection")
        config.vad = vad
        config.create_response = bool(value.get("create_response", True))
        config.interrupt_response = bool(value.get("interrupt_response", True))
        idle = value.get("idle_timeout_ms")
        config.idle_timeout_s = float(idle) / 1000 if isinstance(idle, int | float) and idle > 0 else None
        self.endpointer.params = vad

    def describe(self) -> dict[str, Any]:
        c = self.config
        detection = None if c.vad is None else {
            "type": "server_vad", "threshold": c.vad.threshold, "prefix_padding_ms": c.vad.prefix_padding_ms,
            "silence_duration_ms": c.vad.silence_duration_ms, "create_response": c.create_response,
            "interrupt_response": c.interrupt_response,
            "idle_timeout_ms": int(c.idle_timeout_s * 1000) if c.idle_timeout_s else None}
        return {
            "type": "realtime", "object": "realtime.session", "id": self.id, "model": self.model,
            "output_modalities": ["audio"], "instructions": c.instructions or "",
            "audio": {
                "input": {"format": c.input_format.ga(), "turn_detection": detection,
                          "transcription": {"model": "whisper", "language": c.language}},
                "output": {"format": c.output_format.ga(), "voice": c.voice or "default"},
            },
        }

    # ---- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> bool:
        """Take a call slot and open the call. False: the tenant was at its cap for all of `call_slot_wait_s`."""
        if not await self._take_slot():
            return False
        metrics.ACTIVE.labels(self.transport).inc()
        registry.add(self)
        await self._save()
        self._spawn(self._watchdog())
        return True

    async def _take_slot(self) -> bool:
        # A caller who hangs up and calls again at once may find their last call still holding a slot: the
        # server ends a call (and frees its slot) only after the closing handshake, which the client has seen
        # complete. So a call at the cap waits a moment for a slot before it is refused.
        deadline = time.monotonic() + self.settings.call_slot_wait_s
        while not await asyncio.to_thread(store.take_slot, self.conn, self.tenant, self.id,
                                          self.settings.call_max_per_tenant):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def run(self, receive: Coroutine[Any, Any, None], *, hung_up: str,
                  close: Callable[[], Awaitable[None]]) -> None:
        """Serve the call until the caller hangs up (`receive`, the adapter's read loop, returns: the call ends
        as `hung_up`) or it ends on this side (idle, time limit, gateway shutdown); then end it and `close`
        the connection (errors ignored: the caller may be gone already)."""
        receiver = asyncio.ensure_future(receive)
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait({receiver, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            receiver.cancel()
            closed.cancel()
            await self.end(hung_up if receiver.done() else "server_closed")
            try:
                await close()
            except Exception:
                log.debug("close after end failed", extra={"call_id": self.id})
            registry.discard(self)

    async def greet(self) -> None:
        if not self.settings.call_greeting:
            return
        try:
            await self.create_response(speak=self.settings.call_greeting)
        except Exception:  # the call goes on without it
            log.exception("greeting failed", extra={"call_id": self.id})

    async def _watchdog(self) -> None:
        """Idle timeout and maximum duration, each with a spoken goodbye; keeps the call's slot alive."""
        opened = time.monotonic()
        last_refresh = opened
        while not self.closed.is_set():
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if now - last_refresh > store.SLOT_TTL_S / 3:
                last_refresh = now
                await asyncio.to_thread(store.refresh_slot, self.conn, self.tenant, self.id)
            idle_s = self.config.idle_timeout_s or self.settings.call_idle_timeout_s
            busy = self.utterance is not None or (self.response is not None and not self._reply_heard(now))
            if busy:
                self.last_activity = now
            if now - opened >= self.settings.call_max_duration_s:
                await self.goodbye("max_duration", self.settings.call_limit_goodbye)
                return
            if idle_s and now - self.last_activity >= idle_s:
                await self.goodbye("idle_timeout", self.settings.call_idle_goodbye)
                return

    def _reply_heard(self, now: float) -> bool:
        response = self.response
        return response is not None and response.done and response.played_ms(now) >= response.item.sent_ms - 1

    async def _after_action(self, response: Response, action: str, calls: list[ToolCallRecord]) -> None:
        """Once the reply saying so has been heard: hand the caller to a person, or hang up."""
        self.config.vad = None  # the call is ending: nothing the caller says now starts a turn
        try:
            await self._until_heard(response)
            if action == "transfer":
                reason = next((str(c.arguments.get("reason") or "") for c in calls
                               if c.name == "transfer_to_human" and isinstance(c.arguments, dict)), "")
                await self.transfer(reason or "caller asked for a person")
        finally:
            await self.end(ACTIONS[action])  # whatever happened above, the call does not stay open

    async def _until_heard(self, response: Response) -> None:
        remaining = (response.item.sent_ms - response.played_ms(time.monotonic())) / 1000
        await asyncio.sleep(max(remaining, 0) + 0.2)

    async def transfer(self, reason: str) -> None:
        """Tell the client and the tenant's webhook that the caller goes to a person, with the call so far."""
        summary = self.summary()
        target = self.settings.call_transfer_to
        data = {"call_id": self.id, "transport": self.transport, "reason": reason, "target": target,
                "summary": summary}
        try:
            delivery = await asyncio.to_thread(pipeline.notify, self.conn, self.settings, self.tenant,
                                               "call.transfer", data)
        except Exception:  # the caller is handed over anyway; the record says no delivery was queued
            log.exception("call.transfer webhook not queued", extra={"call_id": self.id})
            delivery = None
        self.transferred = {"reason": reason, "target": target, "at": time.time(), "delivery_id": delivery}
        await self.emit("call.transfer", call_id=self.id, reason=reason, target=target, summary=summary)

    def summary(self) -> dict[str, Any]:
        """The call so far for the colleague who takes it: what was said, by whom, and the last request."""
        said = [{"role": i.role, "text": i.heard_text() if i.role == "assistant" else i.text} for i in self.items
                if i.text]
        last = next((t["text"] for t in reversed(said) if t["role"] == "user"), "")
        return {"turns": sum(1 for t in said if t["role"] == "user"), "last_request": last, "transcript": said}

    async def goodbye(self, reason: str, text: str) -> None:
        """Say `text`, wait until it has been played, then end the call."""
        self.config.vad = None  # nothing the caller says now starts a turn
        await self.create_response(speak=text)
        response = self.response
        if response is not None and response.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(response.task), self.settings.call_step_timeout_s)
            remaining = (response.item.sent_ms - response.played_ms(time.monotonic())) / 1000
            await asyncio.sleep(max(remaining, 0) + 0.2)
        await self.end(reason)

    async def end(self, reason: str) -> None:
        """End the call: cancel pending work, free the slot, write the record. Idempotent."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        # Whatever cancelling the call's work raises, the slot is freed and the record written: a CI run
        # saw rq raise while deleting a reply job, and the call kept its slot with its record `active`.
        try:
            self._drop_eager("dropped")
            for eager in list(self._eagers):  # adopted by a turn whose reply had not started yet
                self._discard_eager_reply(eager, "dropped")
            response, self.response = self.response, None
            if response is not None and not response.done:
                response.done = True
                if response.task is not None:
                    response.task.cancel()
                if response.job_id:
                    await asyncio.to_thread(pipeline.cancel, self.conn, self.settings, response.job_id)
                self._record_reply(response, "cancelled")
                cancelled = protocol.response(response.id, "cancelled", [], reason=reason)
                await self.emit("response.done", response=cancelled)
            for task in list(self._tasks):
                if task is not asyncio.current_task():
                    task.cancel()
            for job_id in list(self._jobs):  # transcription pieces nobody will read
                await asyncio.to_thread(pipeline.cancel, self.conn, self.settings, job_id)
            if reason == registry.SHUTDOWN:
                await self.emit_error("server_shutting_down", "this gateway is restarting, so the call has ended; "
                                      "reconnect to start a new one", type_="server_error")
        finally:
            metrics.ACTIVE.labels(self.transport).dec()
            metrics.ENDS.labels(self.transport, reason).inc()
            await asyncio.to_thread(store.free_slot, self.conn, self.tenant, self.id)
            await self._save()
            self.closed.set()
        await self._notify_ended(reason)

    async def _notify_ended(self, reason: str) -> None:
        """The `call.ended` webhook, after the slot is free: a caller who hangs up and calls again at once
        must not find their own last call still holding it (the full suite caught that race)."""
        data = {"call_id": self.id, "transport": self.transport, "reason": reason, "started_at": self.started_at,
                "ended_at": time.time(), "turns": sum(1 for i in self.items if i.role == "user")}
        try:
            await asyncio.to_thread(pipeline.notify, self.conn, self.settings, self.tenant, "call.ended", data)
        except Exception:  # the call has ended either way
            log.exception("call.ended webhook not queued", extra={"call_id": self.id})

    def close_code(self) -> int:
        """The WebSocket close code for how the call ended: 1012 (service restart) tells a client it may
        reconnect at once; any other end is a normal close."""
        return 1012 if self.end_reason == registry.SHUTDOWN else 1000

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "call", "tenant": self.tenant, "transport": self.transport,
            "status": "ended" if self.end_reason else "active", "end_reason": self.end_reason,
            "started_at": self.started_at, "ended_at": time.time() if self.end_reason else None,
            "turns": self.turns, "barge_ins": self.barge_ins, "vad_false_starts": self.false_starts,
            "dtmf": self.dtmf, "transfer": self.transferred,
            "transcript": [{"item_id": i.id, "role": i.role, "text": i.text, "heard_text": i.heard_text(),
                            "at": i.at, "interrupted": i.interrupted} for i in self.items],
            "cost": {k: round(v, 3) for k, v in self.cost.items()},
        }

    async def _save(self) -> None:
        await asyncio.to_thread(store.save, self.conn, self.record(), self.settings.job_ttl_s)

    # ---- plumbing ---------------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call task failed", exc_info=task.exception(), extra={"call_id": self.id})

    async def emit(self, type_: str, **fields: Any) -> None:
        if self.closed.is_set():
            return
        try:
            await self._send(protocol.event(type_, **fields))
        except Exception:  # the socket is gone: the adapter's receive loop ends the call
            log.debug("send failed", extra={"call_id": self.id})

    async def emit_error(self, code: str, message: str, event_id: str | None = None, param: str | None = None,
                         type_: str = "invalid_request_error") -> None:
        await self.emit("error", **{k: v for k, v in protocol.error(code, message, event_id, param, type_).items()
                                    if k not in ("type", "event_id")})
