"""Scale-out: does a second node add capacity? One node against two, each pinned to its own core.

A "node" is a full set of workers as a replica set would run them: `voicequeue llm-server`, an ASR,
an llm and a TTS worker, all pinned to one core with `taskset` (so the CPU budget gives each engine
one thread, and the llm worker one job per slot of its own server). The nodes share one Redis and one
gateway, which are not pinned: in compose or k8s they are the shared parts, and the gateway is
stateless behind any load balancer. The same 12 English clips go through each setup from 8 closed-loop
callers, with the answer and speech caches emptied before each run. Target: 2 nodes >= 1.8x the turns
per second of 1 node.

Usage: `python bench/scaleout.py [--callers 8] [--nodes 1,2]` (part of `make bench`). Needs 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.concurrency import empty_caches, loadavg, summary, voicequeue_turn  # noqa: E402
from bench.pipeline import clips  # noqa: E402
from bench.streaming import closed_loop  # noqa: E402
from shared import redis_server  # noqa: E402
from tests.stack import free_port, wait_http  # noqa: E402

VOICEQUEUE = str(Path(sys.executable).parent / "voicequeue")


class Cluster:
    """Redis, one gateway, and `nodes` pinned worker sets; every process's output in `log_dir`."""

    def __init__(self, nodes: int, log_dir: Path) -> None:
        self.nodes, self.log_dir = nodes, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis_port, self.gateway_port = free_port(), free_port()
        self.env = {**os.environ, "VQ_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                    "VQ_GATEWAY_PORT": str(self.gateway_port), "VQ_LOG_JSON": "true"}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.spawn("redis", redis_server.command(self.redis_port, self.log_dir / "redis"))
        gateway = self.spawn("gateway", [VOICEQUEUE, "gateway"])
        wait_http(f"{self.base_url}/healthz", 60, gateway)
        servers = [self.start_node(i) for i in range(self.nodes)]
        for i, server in enumerate(servers):
            wait_for_line(server, self.log_dir / f"node{i}-llm-server.log", "llm server warm", 600)
        wait_http(f"{self.base_url}/readyz", 180, gateway)

    def start_node(self, i: int) -> subprocess.Popen[bytes]:
        core = str(i % (os.cpu_count() or 1))
        port = free_port()
        env = {"VQ_LLM_SERVER_PORT": str(port), "VQ_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1",
               "VQ_ASR_METRICS_PORT": str(free_port()), "VQ_LLM_METRICS_PORT": str(free_port()),
               "VQ_TTS_METRICS_PORT": str(free_port())}
        pin = ["taskset", "-c", core, VOICEQUEUE]
        server = self.spawn(f"node{i}-llm-server", [*pin, "llm-server"], env)
        for stage in ("asr", "llm", "tts"):
            self.spawn(f"node{i}-{stage}", [*pin, "worker", stage], env)
        return server

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, line: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name}: exited with {proc.returncode}")
        if log.exists() and line in log.read_text():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{log.name}: no {line!r} within {timeout_s} s")


def run(nodes: int, callers: int, paths: list[Path], log_dir: Path) -> dict[str, Any]:
    cluster = Cluster(nodes, log_dir)
    try:
        cluster.start()
        with httpx.Client(base_url=cluster.base_url, timeout=600) as client:
            for path in paths[:nodes]:  # first-use costs, one per node's workers at most; not counted
                voicequeue_turn(client, path)
        empty_caches(redis.Redis(port=cluster.redis_port))
        row = summary(f"{nodes} node(s)", callers, *closed_loop(paths, callers, voicequeue_turn, cluster.base_url))
        print(row, flush=True)
        return row
    finally:
        cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--nodes", default="1,2")
    ap.add_argument("--clips", type=int, default=12)
    args = ap.parse_args()
    paths = clips(args.clips)
    print(f"{len(paths)} clips, {args.callers} callers, {os.cpu_count()} cores, load average {loadavg()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vq-scaleout-") as tmp:
        for n in (int(x) for x in args.nodes.split(",")):
            rows.append(run(n, args.callers, paths, Path(tmp) / f"nodes{n}"))
    print(f"\nload average {loadavg()} at end\n")
    print("| nodes | first audio p50 / p95 (s) | turn p50 / p95 (s) | turns/s | reply audio s per s | errors | 429s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['ttfa_p50']} / {r['ttfa_p95']} | {r['turn_p50']} / {r['turn_p95']} | "
              f"{r['turns_per_s']} | {r['audio_per_s']} | {r['errors']} | {r['refusals']} |")
    base = rows[0]
    for r in rows[1:]:
        print(f"{r['system']} / {base['system']}: turns/s {r['turns_per_s'] / base['turns_per_s']:.2f}x, "
              f"reply audio/s {r['audio_per_s'] / base['audio_per_s']:.2f}x (target: 2 nodes >= 1.8x)")


if __name__ == "__main__":
    main()
