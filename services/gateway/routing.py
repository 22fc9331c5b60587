"""Which requests submit work, and what the middleware needs to know about each: declared once.

The body limit, rate limits, queue-depth check and Idempotency-Key all read this
table instead of keeping their own lists of paths. A submission's queue follows
from its plan: the first stage of the job kind, at the route's priority.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from services.gateway import batches
from shared import jobs, queues

Body = Literal["upload", "batch", "json"]


@dataclass(frozen=True)
class Submission:
    """A route that creates jobs. `path`: exact, or a regex when `pattern`. `body`: which size limit applies
    ("batch" for multipart only; a JSON body of the same route gets the JSON limit). `replay`: where an
    Idempotency-Key replay reads the current state of what the first request created (None: the route
    takes no Idempotency-Key)."""

    path: str
    kind: str
    priority: str
    body: Body
    replay: str | None = None
    pattern: bool = False

    def matches(self, path: str) -> bool:
        return re.fullmatch(self.path, path) is not None if self.pattern else path == self.path

    @property
    def queue(self) -> str:
        """The queue the new work joins: its plan's first stage."""
        plan = jobs.PLANS.get(self.kind) or batches.plan({})
        return queues.name(plan[0], self.priority)


SUBMISSIONS = (
    Submission("/v1/turns", "turn", "live", "upload", replay="/v1/jobs/{}/audio"),
    Submission("/v1/audio/transcriptions", "transcription", "live", "upload"),
    Submission("/v1/chat", "chat", "live", "json", replay="/v1/jobs/{}"),
    Submission("/v1/audio/speech", "speech", "live", "json"),
    Submission("/v1/batches", batches.KIND, "batch", "batch", replay="/v1/batches/{}"),
    Submission(r"/v1/batches/[^/]+/files", batches.KIND, "batch", "batch", pattern=True),
)

# Document uploads (not job submissions: their indexing job is enqueued by the route): the knowledge size limit.
KNOWLEDGE_UPLOAD = "/v1/knowledge/documents"

# Long-lived GETs that hold one of the tenant's stream slots while open.
STREAMS = re.compile(r"^/v1/jobs/[^/]+/(events|audio/stream)$")


def submission(method: str, path: str) -> Submission | None:
    """The submission a request makes, or None if it submits nothing."""
    if method != "POST":
        return None
    return next((s for s in SUBMISSIONS if s.matches(path)), None)
