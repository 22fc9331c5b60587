"""The CPU budget (shared/cpu.py): per-engine thread defaults from the core count, and compose and k8s
giving each engine container as many cores as it runs threads, the same numbers the defaults derive."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from services.asr.config import AsrSettings
from services.llm.config import LlmSettings
from services.tts.config import TtsSettings
from shared import cpu
from tests.deploy.test_compose import SERVICES
from tests.deploy.test_k8s import OVERLAYS, containers, objects

# Per engine container: the env var setting its threads, and the budget field the default comes from.
THREADS = {
    "asr": ("VQ_ASR_CPU_THREADS", "asr"),
    "asr-batch": ("VQ_ASR_CPU_THREADS", "asr_batch"),
    "tts": ("VQ_TTS_CPU_THREADS", "tts"),
    "llm-server": ("VQ_LLM_SERVER_THREADS", "llm_server"),
    "llm": ("VQ_LLM_EMBED_THREADS", "embeddings"),
}


def cpus(value: str | float) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_budget_splits_two_cores_without_the_llm_server_losing_any() -> None:
    two = cpu.budget(2)
    assert (two.asr, two.asr_batch, two.llm_server, two.llm_slots, two.tts, two.embeddings) == (2, 2, 2, 4, 1, 1)
    one = cpu.budget(1)
    assert min(one.asr, one.llm_server, one.llm_slots, one.tts, one.embeddings) >= 1
    eight = cpu.budget(8)
    assert eight.asr == 8 and eight.llm_server == 8 and eight.llm_slots > two.llm_slots


def test_cores_follow_a_cgroup_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(cpu, "CGROUP_CPU_MAX", quota)
    quota.write_text("max 100000\n")
    assert cpu.cores() == affinity
    quota.write_text("50000 100000\n")  # half a core: still one thread
    assert cpu.cores() == 1
    quota.write_text(f"{(affinity + 3) * 100000} 100000\n")  # a quota above the mask does not add cores
    assert cpu.cores() == affinity


def test_settings_default_to_the_budget_and_stay_settable(monkeypatch: pytest.MonkeyPatch) -> None:
    here = cpu.budget()
    assert AsrSettings().asr_cpu_threads == here.asr
    monkeypatch.setenv("VQ_ASR_WORKER_PRIORITIES", '["live", "batch"]')
    assert AsrSettings().asr_cpu_threads == here.asr  # a worker that may take a live turn keeps the live share
    monkeypatch.setenv("VQ_ASR_WORKER_PRIORITIES", '["batch"]')
    assert AsrSettings().asr_cpu_threads == here.asr_batch == cpu.cores()  # niced: it takes what live leaves
    assert TtsSettings().tts_cpu_threads == here.tts
    llm = LlmSettings()
    assert (llm.llm_server_threads, llm.llm_server_slots, llm.llm_embed_threads, llm.llm_worker_jobs) == (
        here.llm_server, here.llm_slots, here.embeddings, here.llm_slots)
    monkeypatch.setenv("VQ_ASR_CPU_THREADS", "3")
    monkeypatch.setenv("VQ_LLM_SERVER_SLOTS", "6")
    assert AsrSettings().asr_cpu_threads == 3 and LlmSettings().llm_server_slots == 6
    assert LlmSettings().llm_worker_jobs == 6  # a worker of a local server follows its slots
    monkeypatch.setenv("VQ_LLM_SERVER_ENGINE", "llama-cpp-python")
    assert LlmSettings().llm_worker_jobs == 1  # that server answers one request at a time
    monkeypatch.setenv("VQ_LLM_WORKER_JOBS", "3")
    assert LlmSettings().llm_worker_jobs == 3


def check(name: str, env: dict[str, Any], limit: float) -> None:
    var, field = THREADS[name]
    threads = int(env[var])
    assert threads == max(1, math.ceil(limit)), f"{name}: {threads} threads on {limit} cpus"
    assert threads == getattr(cpu.budget(math.ceil(limit)), field), f"{name}: not what the default derives"
    if name == "llm-server":
        assert int(env["VQ_LLM_SERVER_SLOTS"]) == cpu.budget(math.ceil(limit)).llm_slots


@pytest.mark.parametrize("service", sorted(THREADS))
def test_compose_gives_each_engine_its_threads_in_cpus(service: str) -> None:
    svc = SERVICES[service]
    check(service, svc["environment"], cpus(svc["deploy"]["resources"]["limits"]["cpus"]))


def test_compose_engines_fit_a_node_of_the_llm_servers_size() -> None:
    """One of each engine on a node as big as the llm-server's limit would run, at full tilt, the llm-server
    plus one thread of ASR and one of TTS: the oversubscription is bounded, not 3x."""
    node = cpus(SERVICES["llm-server"]["deploy"]["resources"]["limits"]["cpus"])
    engines = sum(cpus(SERVICES[s]["deploy"]["resources"]["limits"]["cpus"]) for s in ("asr", "tts", "llm-server"))
    assert engines <= 2 * node


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_requests_equal_limits_equal_threads(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    seen = set()
    for name, dep in deployments.items():
        service = name.removesuffix("-live").removesuffix("-batch")
        if service not in THREADS:
            continue
        (c,) = containers(dep)
        env = {e["name"]: e.get("value") for e in c["env"]}
        limit = cpus(c["resources"]["limits"]["cpu"])
        check(service, env, limit)
        if service != "llm":  # the llm worker mostly waits on the server: it requests less than its limit
            assert cpus(c["resources"]["requests"]["cpu"]) == limit, f"{name}: request != limit"
        seen.add(service)
    assert seen == {"asr", "tts", "llm", "llm-server"}


def test_compose_llm_worker_runs_one_job_per_server_slot() -> None:
    """So that every slot can be decoding a reply (services/llm/config.py: llm_worker_jobs)."""
    slots = SERVICES["llm-server"]["environment"]["VQ_LLM_SERVER_SLOTS"]
    assert SERVICES["llm"]["environment"]["VQ_LLM_WORKER_JOBS"] == slots


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_llm_workers_run_one_job_per_server_slot(overlay: str) -> None:
    env = {name: {e["name"]: e.get("value") for e in containers(dep)[0]["env"]}
           for name, dep in objects(overlay, "Deployment").items()}
    slots = env["llm-server"]["VQ_LLM_SERVER_SLOTS"]
    pools = [name for name in env if name.startswith("llm-") and name != "llm-server"]
    assert pools and all(env[name]["VQ_LLM_WORKER_JOBS"] == slots for name in pools), pools
