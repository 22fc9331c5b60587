"""The CPU budget: how many threads each engine gets by default, from the cores this process may use.

Every engine's math library (CTranslate2, ggml, onnxruntime) starts one thread
per core unless told otherwise. On one node the ASR worker, the LLM server and
the TTS worker then run 3x as many busy threads as there are cores, and they
spin against each other. The defaults here split the cores instead; each stays
settable (`VQ_ASR_CPU_THREADS`, `VQ_LLM_SERVER_THREADS`, `VQ_TTS_CPU_THREADS`,
`VQ_LLM_EMBED_THREADS`). docs/benchmarks.md has the table they come from.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota (a container's
    `cpus:` limit), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


@dataclass(frozen=True)
class Budget:
    asr: int
    asr_batch: int
    llm_server: int
    llm_slots: int
    tts: int
    embeddings: int


def budget(n: int | None = None) -> Budget:
    """Default threads per engine for `n` cores (default: `cores()`).

    The LLM server decodes for every live reply at once, so it gets every core. So
    does ASR: a caller waits for the whole transcription before anything else can
    start (on 2 cores, 0.63 s with both against 0.98 s with one), and at 4 callers
    it cost nothing measurable once the LLM server stopped spinning
    (`llm_server_spin`; docs/benchmarks.md, "CPU budget"). A batch-only ASR worker
    runs at nice 19 (or the smallest cgroup weight), so it takes only what live
    work leaves idle. TTS (piper's onnxruntime) and sentence embeddings are short
    bursts and get one: piper on 2 threads cost 10% of the turns at 4 callers.
    Slots: on 2 cores 4 parallel sequences gave the most decode throughput
    (llama-batched-bench); more cores carry more."""
    n = cores() if n is None else max(1, n)
    return Budget(asr=n, asr_batch=n, llm_server=n, llm_slots=min(16, max(4, 2 * n)), tts=1, embeddings=1)


def _cgroup_quota() -> float | None:
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)
