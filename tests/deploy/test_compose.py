"""docker-compose.yml and the Dockerfiles, checked without a Docker engine.

The compose file must be valid Compose, every command must be a real `voicequeue` command,
and every VQ_* name and port must be one the settings classes really read.
"""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.gateway.config import GatewaySettings
from shared.config import CommonSettings
from tests.conftest import REPO
from tests.deploy.conftest import DEPLOY, WORKERS
from tests.stack import VENV_BIN
from voicequeue.cli import parser

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ASR_POOLS = {"asr": ["live"], "asr-batch": ["batch"]}  # ASR service -> the queues it takes (as the Procfile)
OURS = ("gateway", *WORKERS, "asr-batch", "llm-server")
SCALED = (*WORKERS, "asr-batch")
SETTINGS_CLASS = {
    "gateway": "services.gateway.config:GatewaySettings",
    "asr": "services.asr.config:AsrSettings",
    "asr-batch": "services.asr.config:AsrSettings",
    "llm": "services.llm.config:LlmSettings",
    "tts": "services.tts.config:TtsSettings",
    "llm-server": "services.llm.config:LlmSettings",
}
# The port each service listens on, named by its setting.
PORT_SETTING = {
    "gateway": "gateway_port",
    "asr": "asr_metrics_port",
    "asr-batch": "asr_metrics_port",
    "llm": "llm_metrics_port",
    "tts": "tts_metrics_port",
    "llm-server": "llm_server_port",
}


def settings_fields(service: str) -> dict[str, Any]:
    module, name = SETTINGS_CLASS[service].split(":")
    cls = getattr(importlib.import_module(module), name)
    return dict(cls.model_fields)


def vq_names(value: Any) -> set[str]:
    """Every VQ_* variable a piece of compose config sets or interpolates."""
    text = json.dumps(value)
    return set(re.findall(r"\$\{(VQ_[A-Z0-9_]+)", text)) | {
        k for k in (value.get("environment") or {}) if k.startswith("VQ_")
    }


def dockerfile(service: str) -> str:
    """The Dockerfile of the image a service runs (asr-batch runs the image the asr service builds)."""
    image = SERVICES[service]["image"]
    builder = next(s for s in SERVICES.values() if s.get("image") == image and "build" in s)
    return (REPO / builder["build"]["dockerfile"]).read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)]


def test_compose_is_valid_against_the_compose_spec_schema() -> None:
    schema = json.loads((Path(__file__).parent / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # The schema really rejects what Compose rejects: a typo in a service key.
    broken = {**COMPOSE, "services": {**SERVICES, "gateway": {**SERVICES["gateway"], "restart_policy": "always"}}}
    assert not validator.is_valid(broken)


def test_the_stack_has_every_service() -> None:
    assert {n for n, s in SERVICES.items() if "profiles" not in s} == {
        "redis", "gateway", "asr", "asr-batch", "llm", "tts", "llm-server", "prometheus", "grafana"}
    # Optional: Redis with failover (tests/deploy/test_redis_ha.py).
    assert {n for n, s in SERVICES.items() if "profiles" in s} == {"redis-replica", "sentinel-1", "sentinel-2",
                                                                   "sentinel-3"}
    redis = SERVICES["redis"]
    assert re.match(r"redis:7\.\d+\.\d+", redis["image"])
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_restarts_is_health_checked_and_limited(service: str) -> None:
    svc = SERVICES[service]
    assert svc["restart"] in ("unless-stopped", "always", "on-failure")
    check = svc["healthcheck"]["test"]
    assert check[0] == "CMD" and len(check) > 1
    limits = svc["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and re.fullmatch(r"\d+[mg]", limits["memory"])
    built = {s["image"] for s in SERVICES.values() if "build" in s}
    if svc.get("image") not in built:  # third-party images are pinned to a release
        assert re.search(r":v?\d+\.\d+\.\d+", svc["image"]), svc["image"]


@pytest.mark.parametrize("service", SCALED)
def test_workers_scale_without_changes(service: str) -> None:
    svc = SERVICES[service]
    # A fixed host port or container name would make `--scale` fail on the second replica.
    assert "ports" not in svc and "container_name" not in svc
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svc["init"] is True
    # Long enough for a job to finish after the warm-stop SIGTERM.
    grace = svc["stop_grace_period"]
    seconds = int(grace[:-1]) * {"s": 1, "m": 60}[grace[-1]]
    assert seconds >= 120
    if service == "llm":  # a call analysis runs up to its own rq timeout
        assert seconds >= CommonSettings().job_timeout_llm_s


def test_compose_gateway_requires_api_keys() -> None:
    assert SERVICES["gateway"]["environment"]["VQ_AUTH_REQUIRED"] == "true"
    assert GatewaySettings(auth_required=SERVICES["gateway"]["environment"]["VQ_AUTH_REQUIRED"]).auth_required


def test_compose_redis_is_durable() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"


@pytest.mark.parametrize("service", OURS)
def test_commands_are_real_voicequeue_commands(service: str) -> None:
    command = SERVICES[service]["command"]
    assert command[0] == "voicequeue"
    assert (VENV_BIN / "voicequeue").exists(), "the voicequeue console script is not installed"
    args = parser().parse_args(command[1:])  # exits (SystemExit) on an unknown command
    assert args.fn.__module__ == "voicequeue.cli"
    if command[1] == "worker":
        importlib.import_module(f"services.{command[2]}.worker").main  # noqa: B018
    # The image runs the same command by default.
    cmd = dict(instructions(dockerfile(service)))["CMD"]
    assert json.loads(cmd) == command


@pytest.mark.parametrize("service", OURS)
def test_env_names_and_ports_match_the_settings(service: str) -> None:
    svc = SERVICES[service]
    fields = settings_fields(service)
    env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
    for name in vq_names(svc) | vq_names(COMPOSE["x-worker"]):
        assert name[3:].lower() in fields, f"{service}: {name} is not a setting of {SETTINGS_CLASS[service]}"
    # The documented .env.example lists them too (it is generated from the same classes).
    example = (REPO / ".env.example").read_text()
    for name in vq_names(svc):
        assert f"# {name}=" in example, f"{name} missing from .env.example"

    port_var = f"VQ_{PORT_SETTING[service].upper()}"
    port = int(env[port_var])
    assert port == fields[PORT_SETTING[service]].default, "compose should run the default port"
    listens = svc.get("expose", []) + [p.split(":")[-1] for p in svc.get("ports", [])]
    assert str(port) in listens
    assert svc["healthcheck"]["test"][-3:-1] == [port_var, str(port)]
    host_setting = {"gateway": "VQ_GATEWAY_HOST", "llm-server": "VQ_LLM_SERVER_HOST"}.get(service)
    if host_setting:  # these two bind 127.0.0.1 by default: in a container they must listen on all interfaces
        assert env[host_setting] == "0.0.0.0"
    if service != "llm-server":
        assert env["VQ_REDIS_URL"] == "redis://redis:6379/0"


@pytest.mark.parametrize("service", OURS)
def test_dockerfiles_are_multistage_pinned_non_root_and_health_checked(service: str) -> None:
    steps = instructions(dockerfile(service))
    bases = [args.split()[0] for op, args in steps if op == "FROM"]
    assert len(bases) >= 2, "multi-stage: build tools stay out of the runtime image"
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", base), f"unpinned base {base}"
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime stage must run as a non-root user"
    health = [args for op, args in final if op == "HEALTHCHECK"]
    assert len(health) == 1
    exec_form = re.search(r"\bCMD\s+(\[.*\])\s*$", health[0])
    assert exec_form, "HEALTHCHECK should use the exec form (no shell needed)"
    cmd = json.loads(exec_form.group(1))
    assert cmd == SERVICES[service]["healthcheck"]["test"][1:], "image and compose health checks differ"
    assert any(op == "COPY" and "healthcheck.py" in args for op, args in final)


@pytest.mark.parametrize("service", OURS)
def test_dockerfiles_copy_every_package_the_project_installs(service: str) -> None:
    """`pip install .` in the image finds only what was copied: a missing package (say the CLI's) breaks
    the `voicequeue` command every container runs."""
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    copied = {args.split()[0] for op, args in instructions(dockerfile(service)) if op == "COPY"}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    grafana = SERVICES["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/voicequeue.yml").read_text())
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_target = mounts["./deploy/grafana/voicequeue.json"]
    assert Path(dashboard_target).parent == Path(providers["providers"][0]["options"]["path"])
    source = datasources["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana/voicequeue.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if p["type"] != "row"}
    assert uids == {source["uid"]}


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for service in ("gateway", *SCALED):
        sd = jobs[service]["dns_sd_configs"][0]
        assert sd["names"] == [service]  # every replica, however many `--scale` made
        assert str(sd["port"]) == str(SERVICES[service]["environment"][f"VQ_{PORT_SETTING[service].upper()}"])
    mounted = {v.split(":")[1] for v in SERVICES["prometheus"]["volumes"] if v.startswith("./")}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= mounted


def test_asr_runs_a_live_only_and_a_niced_batch_only_service() -> None:
    """As the Procfile: live turns never queue behind a recorded call, and the batch worker yields the CPU."""
    settings = importlib.import_module("services.asr.config").AsrSettings
    seen = {}
    for service, queues_taken in ASR_POOLS.items():
        env = SERVICES[service]["environment"]
        # The value really parses as the setting (a JSON list of priorities), not just a plausible string.
        parsed = settings.model_validate({"asr_worker_priorities": json.loads(env["VQ_ASR_WORKER_PRIORITIES"])})
        assert parsed.asr_worker_priorities == queues_taken, service
        seen[service] = int(env.get("VQ_ASR_WORKER_NICE", "0"))
        assert SERVICES[service]["command"] == ["voicequeue", "worker", "asr"]
    assert SERVICES["asr-batch"]["image"] == SERVICES["asr"]["image"]
    assert seen == {"asr": 0, "asr-batch": 19}
    # Each container is its own cgroup, where niceness does not reach: the CPU weight must say it too.
    assert SERVICES["asr-batch"]["cpu_shares"] < SERVICES["asr"].get("cpu_shares", 1024) / 100
    # The batch worker may hold a 2 h recording (~30 min on CPU) when told to stop.
    grace = SERVICES["asr-batch"]["stop_grace_period"]
    assert int(grace[:-1]) * {"s": 1, "m": 60}[grace[-1]] >= 1800
    # Between them every ASR queue has a worker.
    assert sorted(q for qs in ASR_POOLS.values() for q in qs) == sorted(settings().asr_worker_priorities)
