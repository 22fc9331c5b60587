"""Deployment tests: the shipped files, checked statically, and the local stack under a real Prometheus."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import REPO, started_stack
from tests.stack import Stack, free_port

DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
WORKERS = ("asr", "llm", "tts")


def tool(name: str) -> str:
    """A system tool the deployment tests need (.ci/run installs them); fail loudly when missing."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian package: see .ci/run)")
    return path


def loopback_config(stack: Stack, rule_file: Path) -> dict[str, Any]:
    """The shipped prometheus.yml with its service discovery swapped for the stack's loopback ports."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(rule_file)]
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name == "prometheus":
            continue
        assert name in stack.ports, f"prometheus.yml scrapes {name!r}, which the stack does not run"
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{stack.ports[name]}"]}]
    return config


@pytest.fixture(scope="session")
def deploy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own: the Prometheus test counts jobs from zero."""
    with started_stack(tmp_path_factory, "deploy") as stack:
        yield stack


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (promql, body)
        return list(body["data"]["result"])

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, ok: Any, timeout_s: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(promql)
            if ok(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql} never satisfied the check; last result {result}")
            time.sleep(0.5)

    def api(self, path: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["data"]


@pytest.fixture(scope="session")
def prometheus(deploy_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Debian's prometheus server scraping every stack process every second, with the shipped alert rules."""
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(yaml.safe_dump(loopback_config(deploy_stack, PROMETHEUS_DIR / "alerts.yml")))
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (work / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
