"""The local OpenAI-compatible LLM server: llama-cpp-python's, serving the bundled Qwen GGUF.

`--interrupt_requests false`: by default a new request aborts the reply in
progress, which would cut one worker's stream whenever another asks. With it
off, requests queue on the server's single model instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from services.llm.config import LlmSettings
from shared import logs, models


def model_path(settings: LlmSettings) -> Path:
    return settings.llm_server_model_path or models.qwen_gguf(settings.models_dir)


def command(settings: LlmSettings) -> list[str]:
    s = settings
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path(s)),
        "--model_alias", s.llm_model,
        "--host", s.llm_server_host,
        "--port", str(s.llm_server_port),
        "--n_threads", str(s.llm_server_threads),
        "--n_threads_batch", str(s.llm_server_threads),
        "--n_ctx", str(s.llm_server_ctx),
        "--interrupt_requests", "false",
        # Logits for every prompt token are only needed for logprobs; skipping them speeds up prompts.
        "--logits_all", "false",
        "--verbose", "false",
    ]


def environment(settings: LlmSettings) -> dict[str, str]:
    """The server reads its settings from the environment too: drop names that would override our flags."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in {"HOST", "PORT", "MODEL", "API_KEY"}}
    # Passed through the environment, not argv, so the key does not show in `ps`.
    env["API_KEY"] = settings.llm_api_key.get_secret_value()
    return env


def main() -> None:
    settings = LlmSettings()
    logs.setup("llm-server", settings.log_level, settings.log_json,
               debug=settings.debug, redact_pii=settings.log_redact_pii)
    argv = command(settings)
    os.execve(argv[0], argv, environment(settings))


if __name__ == "__main__":
    main()
