"""The local OpenAI-compatible LLM server, serving the bundled Qwen GGUF.

By default llama.cpp's own `llama-server` (built from the llama.cpp source the
llama-cpp-python sdist vendors, `make llama-server`): N parallel slots with
continuous batching, so several replies decode at once, each slot keeping its
prompt cache. `VQ_LLM_SERVER_ENGINE=llama-cpp-python` runs llama-cpp-python's
server instead, which generates one completion at a time.

The server runs as our child, not through `execve`: its log lines go through
the privacy filter (`shared.child`), and once it has loaded, `warmup` puts the
system prompt into every slot and runs the JSON-schema path once.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from services.llm import warmup
from services.llm.config import LlmSettings
from shared import child, logs, models


def model_path(settings: LlmSettings) -> Path:
    return settings.llm_server_model_path or models.qwen_gguf(settings.models_dir)


def binary(settings: LlmSettings) -> Path:
    return settings.llm_server_binary or settings.cache_dir / "bin" / "llama-server"


def threads(settings: LlmSettings) -> int:
    return settings.llm_server_threads


def slots(settings: LlmSettings) -> int:
    return 1 if settings.llm_server_engine == "llama-cpp-python" else settings.llm_server_slots


def slot_dir(settings: LlmSettings) -> Path | None:
    """The directory llama-server saves and restores slots in, created private; None if it cannot be."""
    path = settings.llm_server_slot_dir or Path(tempfile.gettempdir()) / f"voicequeue-llm-slots-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        logging.getLogger(__name__).warning("no slot directory: each slot will prefill the system prompt",
                                            extra={"path": str(path), "error": repr(exc)})
        return None
    return path


def saved_prefixes(settings: LlmSettings) -> warmup.SavedPrefixes | None:
    directory = slot_dir(settings)
    if directory is None:
        return None
    model = model_path(settings).resolve()
    return warmup.SavedPrefixes(directory, f"{model} {model.stat().st_size} {binary(settings).resolve()}")


def command(settings: LlmSettings) -> list[str]:
    """The server's argv for the configured engine."""
    if settings.llm_server_engine == "llama-cpp-python":
        return python_command(settings)
    return llama_server_command(settings)


def llama_server_command(settings: LlmSettings) -> list[str]:
    s, n = settings, slots(settings)
    path = binary(s)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build it with `make llama-server` (or set "
                                "VQ_LLM_SERVER_BINARY, or VQ_LLM_SERVER_ENGINE=llama-cpp-python)")
    return [
        str(path),
        "--model", str(model_path(s)),
        "--alias", s.llm_model,
        "--host", s.llm_server_host,
        "--port", str(s.llm_server_port),
        "--threads", str(threads(s)),
        "--threads-batch", str(threads(s)),
        "--parallel", str(n),
        # Each slot its own window of llm_server_ctx. Not --kv-unified: with one shared pool the server
        # moves idle slots' prompts out to its RAM cache at every new task, and measured here two of four
        # concurrent callers then found their slot cold. Separate windows keep every slot's prefix in place
        # (and the RAM cache still gets a copy, for when an analysis takes a slot).
        "--ctx-size", str(s.llm_server_ctx * n),
        "--cont-batching",
        "--cache-prompt",
        "--no-webui",
        # /slots would show the prompts each slot holds; nothing of ours reads it.
        "--no-slots",
        # Request counts only (behind the API key): the warm-up waits for an idle server (services.llm.warmup).
        "--metrics",
        # The warm-up saves one slot's system-prompt prefix here and restores it into the others.
        *(["--slot-save-path", str(saved)] if (saved := slot_dir(s)) else []),
    ]


def python_command(settings: LlmSettings) -> list[str]:
    """llama-cpp-python's server. `--interrupt_requests false`: by default a new request aborts the reply in
    progress, which would cut one worker's stream whenever another asks; with it off, requests queue."""
    s = settings
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path(s)),
        "--model_alias", s.llm_model,
        "--host", s.llm_server_host,
        "--port", str(s.llm_server_port),
        "--n_threads", str(threads(s)),
        "--n_threads_batch", str(threads(s)),
        "--n_ctx", str(s.llm_server_ctx),
        "--interrupt_requests", "false",
        # Logits for every prompt token are only needed for logprobs; skipping them speeds up prompts.
        "--logits_all", "false",
        "--verbose", "false",
    ]


def environment(settings: LlmSettings) -> dict[str, str]:
    """The servers read settings from the environment too: drop names that would override our flags. The key
    goes through the environment, not argv, so it does not show in `ps`."""
    key = settings.llm_api_key.get_secret_value()
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in {"HOST", "PORT", "MODEL", "API_KEY", "LLAMA_API_KEY"}}
    env["LLAMA_API_KEY" if settings.llm_server_engine == "llama-server" else "API_KEY"] = key
    if not settings.llm_server_spin:
        # ggml's threads meet at a barrier after every operation, and OpenMP makes a thread that arrives early
        # spin. On a node where ASR and TTS are computing too, that spinning is cores taken from them.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def main() -> None:
    settings = LlmSettings()
    logs.setup("llm-server", settings.log_level, settings.log_json,
               debug=settings.debug, redact_pii=settings.log_redact_pii)
    log = logging.getLogger("voicequeue.llm_server")
    argv = command(settings)
    log.info("starting %s", settings.llm_server_engine,
             extra={"slots": slots(settings), "threads": threads(settings), "port": settings.llm_server_port})
    proc = child.start(argv, environment(settings), logging.getLogger(settings.llm_server_engine))
    after = None
    if settings.llm_server_warm and settings.llm_server_engine == "llama-server":
        def after() -> None:
            warmup.run(settings, slots(settings), proc, saved_prefixes(settings))
    sys.exit(child.supervise(proc, after))


if __name__ == "__main__":
    main()
