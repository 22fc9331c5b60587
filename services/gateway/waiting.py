"""Waiting for a job to finish, for the endpoints that answer synchronously."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from services.gateway.errors import ApiError
from services.gateway.eventstream import follow
from shared import events
from shared.jobs import Job


def failure_status(error: dict[str, Any]) -> int:
    """A stage's stated reason is the caller's input unless it is our crash or an upstream outage."""
    reason = str(error.get("reason") or "")
    if reason == "internal_error":
        return 500
    if reason.startswith("upstream"):
        return 502
    return 400


async def wait_done(aconn: aioredis.Redis, job_id: str, timeout_s: float, what: str = "job") -> Job:
    """The finished job record (carried by `job.done`), or the ApiError saying why there is none."""
    final = None
    async for event in follow(aconn, job_id, timeout_s=timeout_s):
        if event is not None and event[1] in events.TERMINAL:
            final = event
            break
    if final is None:
        raise ApiError(504, "timeout", f"{what} {job_id} did not finish in {timeout_s:g} s",
                       headers={"X-Job-Id": job_id})
    if final[1] == "job.cancelled":
        raise ApiError(409, "cancelled", f"{what} {job_id} was cancelled", headers={"X-Job-Id": job_id})
    if final[1] == "job.failed":
        error = final[2]["error"]
        raise ApiError(failure_status(error), error["reason"], error["message"], headers={"X-Job-Id": job_id})
    return Job.from_wire(final[2]["job"])
