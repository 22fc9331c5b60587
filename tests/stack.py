"""Starting the real stack as separate processes (llama.cpp server, workers, gateway) for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@contextlib.contextmanager
def lone_gateway(log_dir: Path, redis_url: str, extra_env: dict[str, str] | None = None) -> Iterator[int]:
    """A gateway process alone on the Redis at `redis_url` (no workers), for tests of its API; yields its port."""
    port = free_port()
    env = {**os.environ, "VQ_REDIS_URL": redis_url, "VQ_GATEWAY_PORT": str(port), **(extra_env or {})}
    with (log_dir / "gateway.log").open("wb") as log:
        proc = subprocess.Popen([_voicequeue(), "gateway"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
            yield port
        finally:
            proc.terminate()
            proc.wait(15)


def _voicequeue() -> str:
    return str(VENV_BIN / "voicequeue") if (VENV_BIN / "voicequeue").exists() else shutil.which("voicequeue") or ""


@dataclass
class Stack:
    redis_url: str
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    specs: dict[str, tuple[tuple[str, ...], dict[str, str]]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def llm_base_url(self) -> str:
        return self.env["VQ_LLM_BASE_URL"]

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.specs[name] = (args, env or {})
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen([_voicequeue(), *args], env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start(self, llm_base_url: str | None = None, extra_env: dict[str, str] | None = None) -> Stack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in ("gateway", "asr", "asr-batch", "llm", "tts", "llm-server"):
            self.ports[name] = free_port()
        self.env = {
            **os.environ,
            "VQ_REDIS_URL": self.redis_url,
            "VQ_GATEWAY_PORT": str(self.ports["gateway"]),
            "VQ_ASR_METRICS_PORT": str(self.ports["asr"]),
            "VQ_LLM_METRICS_PORT": str(self.ports["llm"]),
            "VQ_TTS_METRICS_PORT": str(self.ports["tts"]),
            "VQ_LLM_SERVER_PORT": str(self.ports["llm-server"]),
            "VQ_LLM_BASE_URL": llm_base_url or f"http://127.0.0.1:{self.ports['llm-server']}/v1",
            "VQ_LOG_JSON": "true",
            # The product's default; VQ_CALL_EAGER_REPLY=false in the environment runs the stack without it.
            "VQ_CALL_EAGER_REPLY": os.environ.get("VQ_CALL_EAGER_REPLY", "true"),
            "VQ_CALL_TRANSFER_TO": "+15550100",  # where a transfer goes (tests/gateway/test_call_actions.py)
            **(extra_env or {}),
        }
        if llm_base_url is None:
            self.spawn("llm-server", "llm-server")
        # As the Procfile: a live-only ASR worker and a niced batch one, so live turns never wait on a batch.
        self.spawn("worker-asr", "worker", "asr", env={"VQ_ASR_WORKER_PRIORITIES": '["live"]'})
        self.spawn("worker-asr-batch", "worker", "asr", env={
            "VQ_ASR_WORKER_PRIORITIES": '["batch"]', "VQ_ASR_WORKER_NICE": "19",
            "VQ_ASR_METRICS_PORT": str(self.ports["asr-batch"])})
        for stage in ("llm", "tts"):
            self.spawn(f"worker-{stage}", "worker", stage)
        gateway = self.spawn("gateway", "gateway")
        wait_http(f"{self.base_url}/healthz", 60, gateway)
        if llm_base_url is None:
            wait_http(f"{self.llm_base_url}/models", 120, self.procs["llm-server"])
        wait_http(f"{self.base_url}/readyz", 120, gateway)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_dir}/{name}.log")
            if httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200:
                return
            time.sleep(0.3)
        raise TimeoutError("workers did not register within 180 s")

    def metrics(self, service: str) -> str:
        url = f"{self.base_url}/metrics" if service == "gateway" else f"http://127.0.0.1:{self.ports[service]}/"
        return httpx.get(url, timeout=10).text

    def metric(self, service: str, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching the labels (0.0 when absent)."""
        total = 0.0
        for line in self.metrics(service).splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 15)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)

    # Fault injection (tests/reliability): kill processes as a crash or container kill would, restart them.

    def respawn(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `name` again with the arguments it was spawned with (as k8s or compose would restart it);
        `env` adds to or replaces its own environment overrides."""
        args, own_env = self.specs[name]
        return self.spawn(name, *args, env={**own_env, **(env or {})})

    def kill(self, name: str, *, group: bool = True) -> int:
        """SIGKILL `name`: with `group`, its whole process group (a container kill: the worker and rq's
        scheduler), else the process alone. Forked job processes have a group of their own. Returns the pid."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, 9)
            else:
                os.kill(proc.pid, 9)
        proc.wait(10)
        return proc.pid

    def job_process(self, name: str) -> int | None:
        """The pid of the job process a forking worker `name` has forked (rq puts it in its own group)."""
        import psutil

        try:
            children = psutil.Process(self.procs[name].pid).children()
        except psutil.NoSuchProcess:
            return None
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if os.getpgid(child.pid) == child.pid:
                    return int(child.pid)
        return None

    def stop_worker(self, name: str) -> None:
        """A graceful stop (SIGTERM, as `docker stop`): the worker finishes its job first."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(60)


@dataclass
class RedisServer:
    """A redis-server (AOF everysec, as in production) that a test can crash and restart on the same port
    and data directory."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        from shared import redis_server

        log = (self.data_dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(redis_server.command(self.port, self.data_dir), stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise TimeoutError("redis-server did not listen within 30 s")

    def stop(self, sig: int = 15) -> None:
        """SIGTERM: Redis flushes its AOF and exits. SIGKILL: a crash (the last second may be lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
