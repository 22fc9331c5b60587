"""The llm worker: rq over `llm:live` then `llm:batch`, replies streamed from an OpenAI-compatible server."""

from __future__ import annotations

import logging
import time

import openai

from services.llm import embeddings, tasks
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
        start = time.perf_counter()
        embedder = embeddings.load(settings.llm_faq_paraphrase)
        loaded = {"all-minilm-l6-v2": time.perf_counter() - start} if embedder else {}
        tasks.setup(settings, engine, embedder)
        try:
            return {**loaded, settings.llm_model: engine.check()}
        except openai.OpenAIError as exc:
            log.warning("LLM server not answering yet", extra={"base_url": settings.llm_base_url,
                                                              "error": type(exc).__name__})
            return loaded

    worker.serve("llm", settings, settings.llm_metrics_port, preload)


if __name__ == "__main__":
    main()
