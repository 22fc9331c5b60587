"""The llm worker: rq over `llm:live` then `llm:batch`, replies streamed from an OpenAI-compatible server."""

from __future__ import annotations

import logging

import openai

from services.llm import tasks
from services.llm.config import LlmSettings
from services.llm.engines.openai_compat import OpenAICompatEngine
from shared import worker

log = logging.getLogger(__name__)


def main() -> None:
    settings = LlmSettings()

    def preload() -> dict[str, float]:
        """Make the engine once; a quick model listing shows the server answers (not fatal: it may start later).

        The client is per process, so each forked job process opens its own connections.
        """
        engine = OpenAICompatEngine(settings)
        tasks.setup(settings, engine)
        try:
            return {settings.llm_model: engine.check()}
        except openai.OpenAIError as exc:
            log.warning("LLM server not answering yet", extra={"base_url": settings.llm_base_url,
                                                              "error": type(exc).__name__})
            return {}

    worker.serve("llm", settings, settings.llm_metrics_port, preload)


if __name__ == "__main__":
    main()
