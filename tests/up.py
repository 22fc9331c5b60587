"""`voicequeue up` itself as a test fixture: the real supervisor with its own free ports and data directory.

Unlike `tests/stack.py` (which starts each process itself), this runs the command users run, so the
supervision under test is the product's. VQ_REDIS_URL and VQ_LLM_BASE_URL go into a `.env` in the working
directory rather than the environment: `voicequeue up` supervises its own Redis and llm-server only when
those two are not in the environment, and every process still reads the ports from `.env`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.stack import VENV_BIN, free_port

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("gateway", "asr", "asr-batch", "llm", "tts", "llm-server", "redis", "supervisor")


@dataclass
class Up:
    workdir: Path
    procfile: Path = REPO / "Procfile"
    env_file: dict[str, str] = field(default_factory=dict)  # written to .env
    env: dict[str, str] = field(default_factory=dict)  # extra environment
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    @property
    def log(self) -> Path:
        return self.workdir / "up.log"

    def start(self, *, embedded_llm: bool = True, timeout_s: float = 600) -> Up:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in SERVICES:
            self.ports.setdefault(name, free_port())
        dotenv = {"VQ_REDIS_URL": self.redis_url, **self.env_file}
        if embedded_llm:
            dotenv["VQ_LLM_BASE_URL"] = f"http://127.0.0.1:{self.ports['llm-server']}/v1"
        (self.workdir / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
        env = {k: v for k, v in os.environ.items() if k not in ("VQ_REDIS_URL", "VQ_LLM_BASE_URL")}
        env.update({
            "VQ_DATA_DIR": str(self.workdir / "var"),
            "VQ_GATEWAY_PORT": str(self.ports["gateway"]),
            "VQ_ASR_METRICS_PORT": str(self.ports["asr"]),
            "VQ_ASR_BATCH_METRICS_PORT": str(self.ports["asr-batch"]),
            "VQ_LLM_METRICS_PORT": str(self.ports["llm"]),
            "VQ_TTS_METRICS_PORT": str(self.ports["tts"]),
            "VQ_LLM_SERVER_PORT": str(self.ports["llm-server"]),
            "VQ_SUPERVISOR_METRICS_PORT": str(self.ports["supervisor"]),
            "VQ_LOG_JSON": "true",
            **self.env,
        })
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(VENV_BIN / "voicequeue"), "up", "--procfile", str(self.procfile)],
                                         cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"voicequeue up exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"not ready within {timeout_s} s:\n{self.tail()}")

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def rpc(self) -> Any:
        """supervisord's XML-RPC interface over its unix socket (what supervisorctl uses)."""
        from supervisor.xmlrpc import SupervisorTransport

        sock = (self.workdir / "var" / "supervisor" / "supervisor.sock").resolve()
        return xmlrpc.client.ServerProxy("http://127.0.0.1", SupervisorTransport("", "", f"unix://{sock}")).supervisor

    def processes(self) -> dict[str, dict[str, Any]]:
        """Program name → supervisord's info (pid, statename, start)."""
        return {p["name"]: p for p in self.rpc().getAllProcessInfo()}

    def pids(self) -> dict[str, int]:
        return {name: int(p["pid"]) for name, p in self.processes().items()}

    def kill(self, name: str) -> tuple[int, float]:
        """SIGKILL one supervised process (a crash, an OOM kill). Returns (pid, monotonic time of the kill)."""
        pid = self.pids()[name]
        assert pid > 0, f"{name} is not running: {self.processes()[name]}"
        os.kill(pid, signal.SIGKILL)
        return pid, time.monotonic()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a supervisor metric's samples matching the labels (0.0 when absent)."""
        text = httpx.get(f"http://127.0.0.1:{self.ports['supervisor']}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def stop(self, timeout_s: float = 120) -> int | None:
        """SIGTERM to `voicequeue up` (as Ctrl-C or systemd would). Returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise

    def kill_all(self) -> None:
        """Last-resort cleanup: every process supervisord started has its own group, so kill them one by one."""
        with contextlib.suppress(Exception):
            for pid in self.pids().values():
                if pid > 0:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
