"""The llm worker: rq over `llm:live` then `llm:batch`, replies streamed from an OpenAI-compatible server."""

from __future__ import annotations

from services.llm import tasks
from services.llm.config import LlmSettings
from shared import knowledge, webhooks
from shared.worker import Service, serve

SERVICE = Service("llm", tasks.load, tasks.work, tasks={
    knowledge.INDEX_TASK: tasks.index_document,
    webhooks.DELIVER_TASK: webhooks.task,  # deliveries share llm:batch with indexing: never ahead of a live turn
})


def main() -> None:
    settings = LlmSettings()
    serve(SERVICE, settings, settings.llm_metrics_port, concurrency=settings.llm_worker_jobs)


if __name__ == "__main__":
    main()
