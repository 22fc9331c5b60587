"""How long a process killed under `voicequeue up`'s supervisor takes to serve again, per process type.

For each process type, a supervisord (voicequeue.supervisor, the code `voicequeue up` runs) with
Redis and that process on free ports; the baseline is the process's first start in the same run.
Then SIGKILL it `--kills` times and time kill → serving again (a worker: its /metrics answers, which
it opens after loading its models and reaching Redis; llm-server: /v1/models; the gateway: /healthz;
Redis: PING). Prints the median per type and its ratio to the first start.

    .venv/bin/python bench/restart.py [--kills 3] [--only asr,tts]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.stack import free_port  # noqa: E402
from tests.up import Up  # noqa: E402

TYPES = ["redis", "asr", "llm", "tts", "gateway", "llm-server"]


def serving(up: Up, name: str, port: int) -> bool:
    try:
        if name == "redis":
            return bool(redis.Redis.from_url(up.redis_url, socket_timeout=1).ping())
        path = {"llm-server": "/v1/models", "gateway": "/healthz"}.get(name, "/")
        # llm-server answers 401 without its API key: answering is what counts here.
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code < 500
    except (httpx.HTTPError, redis.RedisError):
        return False


def wait(probe, timeout_s: float = 300) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if probe():
            return time.monotonic() - start
        time.sleep(0.05)
    raise TimeoutError("not serving")


def measure(name: str, kills: int) -> tuple[float, list[float]]:
    procfile = {line.split(":", 1)[0]: line for line in (REPO / "Procfile").read_text().splitlines()
                if line and not line.startswith("#")}
    with tempfile.TemporaryDirectory(prefix="vq-restart-") as tmp:
        work = Path(tmp)
        names = ["redis"] if name == "redis" else ["redis", name]
        (work / "Procfile").write_text("\n".join(procfile[n] for n in names) + "\n")
        up = Up(work)
        for key in ("redis", "supervisor", "target"):
            up.ports[key] = free_port()
        port = up.ports["target"]
        (work / ".env").write_text(f"VQ_REDIS_URL={up.redis_url}\n")
        env = {**os.environ, "VQ_DATA_DIR": str(work / "var"),
               "VQ_SUPERVISOR_METRICS_PORT": str(up.ports["supervisor"]),
               "VQ_ASR_METRICS_PORT": str(port), "VQ_LLM_METRICS_PORT": str(port), "VQ_TTS_METRICS_PORT": str(port),
               "VQ_GATEWAY_PORT": str(port), "VQ_LLM_SERVER_PORT": str(port), "VQ_LOG_JSON": "true",
               "VQ_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1"}
        env.pop("VQ_REDIS_URL", None)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        code = ("import sys; from pathlib import Path; from voicequeue import supervisor; "
                "supervisor.run(Path(sys.argv[1]), sys.argv[2:])")
        started = time.monotonic()
        with up.log.open("ab") as out:
            up.proc = subprocess.Popen([sys.executable, "-c", code, str(work / "Procfile"), *names], cwd=work,
                                       env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait(lambda: (work / "var" / "supervisor" / "supervisor.sock").exists(), 60)
            try:
                wait(lambda: serving(up, name, port))
            except TimeoutError:
                raise TimeoutError(f"{name} never served:\n{up.tail()}") from None
            first = time.monotonic() - started
            times = []
            for _ in range(kills):
                time.sleep(1.0)
                old, killed = up.kill(name)
                wait(lambda old=old: up.pids().get(name, 0) not in (0, old) and serving(up, name, port))  # type: ignore[misc]
                times.append(time.monotonic() - killed)
            return first, times
        finally:
            up.proc.send_signal(signal.SIGTERM)
            try:
                up.proc.wait(60)
            finally:
                up.kill_all()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--only", default=",".join(TYPES))
    args = p.parse_args()
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")
    print(f"{'process':<11} {'first start s':>14} {'restart s (median)':>19} {'all restarts s':>22} {'ratio':>6}")
    for name in args.only.split(","):
        first, times = measure(name, args.kills)
        med = statistics.median(times)
        print(f"{name:<11} {first:>14.2f} {med:>19.2f} {' '.join(f'{t:.2f}' for t in times):>22} "
              f"{med / first:>6.2f}", flush=True)
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
