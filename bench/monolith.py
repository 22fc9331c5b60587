"""The seed-000 design, as the baseline for `bench/concurrency.py`: one FastAPI process, engines inline.

POST /chat takes an audio file and answers with the spoken reply as WAV (transcript and reply
text in `X-Transcript` / `X-Reply-Text`, percent-encoded), after running in this process:
faster-whisper (tiny.en int8, beam 5, VAD), llama.cpp in-process through llama-cpp-python
(Qwen2.5-Coder-1.5B Q4, the product's system prompt and message layout, temperature 0.5,
160 reply tokens) and piper (en_US-joe-medium) on the whole reply. No queues, no Redis.
Same models and parameters as voicequeue's defaults. One llama.cpp context can serve one
completion at a time, so it is behind a lock, as it would be in such a process.

Usage: `python bench/monolith.py --port 8123` (`bench/concurrency.py` starts it itself).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import wave
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi import FastAPI, File, Response, UploadFile  # noqa: E402

from services.llm import prompts  # noqa: E402
from services.llm.config import LlmSettings  # noqa: E402
from shared import cpu, models  # noqa: E402

LANGUAGE = "en"
BEAM = 5


class Engines:
    def __init__(self) -> None:
        from faster_whisper import WhisperModel
        from llama_cpp import Llama
        from piper import PiperVoice

        settings = LlmSettings()
        threads = cpu.cores()  # one process owns the machine: every engine gets every core
        self.settings = settings
        self.whisper = WhisperModel(str(models.whisper_tiny_en()), device="cpu", compute_type="int8",
                                    cpu_threads=threads)
        self.llama = Llama(model_path=str(models.qwen_gguf(settings.models_dir)), n_ctx=settings.llm_server_ctx,
                           n_threads=threads, n_threads_batch=threads, verbose=False)
        onnx, config = models.piper_voice()
        self.piper = PiperVoice.load(str(onnx), config_path=str(config))
        self.llama_lock = threading.Lock()
        self.piper_lock = threading.Lock()

    def transcribe(self, path: str) -> str:
        segments, _ = self.whisper.transcribe(path, beam_size=BEAM, vad_filter=True, language=LANGUAGE)
        return " ".join(s.text.strip() for s in segments).strip()

    def reply(self, text: str) -> str:
        s = self.settings
        messages: Any = prompts.build(text, system=s.llm_system_prompt, language=LANGUAGE)
        with self.llama_lock:
            out: Any = self.llama.create_chat_completion(messages=messages, temperature=s.llm_temperature,
                                                         max_tokens=s.llm_max_tokens)
        return str(out["choices"][0]["message"]["content"] or "").strip()

    def speak(self, text: str) -> bytes:
        buf = io.BytesIO()
        with self.piper_lock, wave.open(buf, "wb") as wav:
            self.piper.synthesize_wav(text, wav)
        return buf.getvalue()


def app(engines: Engines) -> FastAPI:
    api = FastAPI(title="monolith (seed 000)")

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/chat")
    def chat(file: Annotated[UploadFile, File()]) -> Response:
        with tempfile.NamedTemporaryFile(suffix=Path(file.filename or "a.wav").suffix) as tmp:
            tmp.write(file.file.read())
            tmp.flush()
            transcript = engines.transcribe(tmp.name)
        reply = engines.reply(transcript)
        audio = engines.speak(reply)
        return Response(audio, media_type="audio/wav",
                        headers={"X-Transcript": quote(transcript), "X-Reply-Text": quote(reply)})

    return api


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    args = ap.parse_args()
    uvicorn.run(app(Engines()), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
