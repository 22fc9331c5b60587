"""Load test on loopback: 50 clients against cached answers and job reads, then an overload run.

Starts its own Redis, gateway and llm worker (cached answers never reach a model, so no
llama.cpp server runs) and pre-loads the answer cache with `voicequeue faq load`.

1. Steady: each client (its own tenant and API key) loops for `--seconds`: POST /v1/chat with a
   cached question, then GET /v1/jobs/{id} every `--poll` s until the job is done. Reports
   requests/s, p50/p99 per request kind, chats completed/s and their end-to-end latency, errors.
2. Overload: `--overload-clients` clients over `--overload-tenants` tenants submit as fast as they
   can without waiting for their jobs, more than the one llm worker can take. Backpressure should
   answer 429 (rate_limited per tenant, queue_full once llm:live is deep), keep the queue bounded,
   and keep the gateway's and Redis's memory bounded: their RSS is reported before and after.

Usage: `python bench/load.py [--seconds 60] [--clients 50] [--overload-seconds 30]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline import machine, pct  # noqa: E402
from services.gateway import keystore  # noqa: E402
from tests.conftest import running_redis  # noqa: E402
from tests.stack import Stack, free_port, wait_http  # noqa: E402

QUESTION = "What are your opening hours?"
ANSWER = "We are open from nine in the morning to six in the evening, Monday to Friday."
CHAT = {"text": QUESTION, "speak": False, "language": "en"}
MB = 1024 * 1024


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"submit": [], "read": [], "chat": []})
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def note(self, kind: str, start: float, response: httpx.Response) -> None:
        self.latencies[kind].append(time.perf_counter() - start)
        code = ""
        if response.status_code >= 400:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                code = " " + response.json()["error"]["code"]
        self.statuses[f"{kind} {response.status_code}{code}"] += 1


@contextlib.contextmanager
def bench_stack(tmp: Path, env: dict[str, str]) -> Iterator[tuple[Stack, redis.Redis]]:
    with running_redis(tmp / "redis") as url:
        stack = Stack(url, tmp / "logs")
        stack.log_dir.mkdir(parents=True)
        stack.ports["gateway"] = free_port()
        stack.env = {**os.environ, "VQ_REDIS_URL": url,
                     "VQ_GATEWAY_PORT": str(stack.ports["gateway"]), "VQ_LLM_METRICS_PORT": str(free_port()),
                     # Nothing listens there: every answer must come from the cache.
                     "VQ_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1", "VQ_LOG_LEVEL": "WARNING", **env}
        conn = redis.Redis.from_url(url)
        try:
            faq = tmp / "faq.yaml"
            faq.write_text(json.dumps([{"question": QUESTION, "answer": ANSWER}]))
            stack.spawn("faq", "faq", "load", str(faq), "--global", "--language", "en").wait(300)
            stack.spawn("worker-llm", "worker", "llm")
            gateway = stack.spawn("gateway", "gateway")
            wait_http(f"{stack.base_url}/healthz", 60, gateway)
            yield stack, conn
        finally:
            stack.stop()
            conn.close()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


def cpu_s(stack: Stack, conn: redis.Redis) -> dict[str, float]:
    """CPU seconds used so far by the gateway, Redis, the llm worker and this load generator."""
    pids = {"gateway": stack.procs["gateway"].pid, "redis": int(conn.info("server")["process_id"]),
            "llm worker": stack.procs["worker-llm"].pid, "clients": os.getpid()}
    return {k: sum(psutil.Process(pid).cpu_times()[:2]) for k, pid in pids.items()}


def cpu_report(before: dict[str, float], after: dict[str, float], wall: float, requests: int) -> None:
    used = {k: after[k] - before[k] for k in before}
    print("  CPU: " + ", ".join(f"{k} {v / wall * 100:.0f}%" for k, v in used.items())
          + f"; gateway {used['gateway'] / max(requests, 1) * 1000:.2f} ms CPU per request")


def memory(stack: Stack, conn: redis.Redis) -> dict[str, float]:
    redis_pid = int(conn.info("server")["process_id"])
    return {"gateway": rss_mb(stack.procs["gateway"].pid), "redis": rss_mb(redis_pid),
            "llm worker": rss_mb(stack.procs["worker-llm"].pid)}


async def wait_job(client: httpx.AsyncClient, job_id: str, headers: dict[str, str], poll_s: float,
                   tally: Tally | None) -> str:
    while True:
        start = time.perf_counter()
        r = await client.get(f"/v1/jobs/{job_id}", headers=headers)
        if tally:
            tally.note("read", start, r)
        if r.status_code != 200:
            return f"read {r.status_code}"
        status = str(r.json()["status"])
        if status in ("done", "failed", "cancelled"):
            return status
        await asyncio.sleep(poll_s)


async def steady_client(client: httpx.AsyncClient, key: str, until: float, poll_s: float, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    while time.perf_counter() < until:
        begin = time.perf_counter()
        try:
            r = await client.post("/v1/chat", json=CHAT, headers=headers)
            tally.note("submit", begin, r)
            if r.status_code != 202:
                tally.errors[f"submit {r.status_code}"] += 1
                continue
            outcome = await wait_job(client, r.json()["id"], headers, poll_s, tally)
        except httpx.HTTPError as exc:
            tally.errors[type(exc).__name__] += 1
            continue
        if outcome != "done":
            tally.errors[f"job {outcome}"] += 1
        else:
            tally.latencies["chat"].append(time.perf_counter() - begin)


async def overload_client(client: httpx.AsyncClient, key: str, until: float, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    while time.perf_counter() < until:
        begin = time.perf_counter()
        try:
            r = await client.post("/v1/chat", json=CHAT, headers=headers)
        except httpx.HTTPError as exc:
            tally.errors[type(exc).__name__] += 1
            continue
        tally.note("submit", begin, r)
        if r.status_code == 429:
            await asyncio.sleep(0.05)  # a polite client would wait Retry-After; this one keeps pressing


async def sample_depth(conn: redis.Redis, until: float, depths: list[int]) -> None:
    while time.perf_counter() < until:
        depths.append(int(await asyncio.to_thread(conn.llen, "rq:queue:llm:live")))
        await asyncio.sleep(0.5)


async def run(base_url: str, keys: list[str], seconds: float, poll_s: float, overload: bool,
              conn: redis.Redis) -> tuple[Tally, float, list[int]]:
    tally = Tally()
    depths: list[int] = []
    limits = httpx.Limits(max_connections=len(keys) + 10, max_keepalive_connections=len(keys) + 10)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        until = start + seconds
        if overload:
            tasks = [overload_client(client, k, until, tally) for k in keys]
        else:
            tasks = [steady_client(client, k, until, poll_s, tally) for k in keys]
        await asyncio.gather(sample_depth(conn, until, depths), *tasks)
        return tally, time.perf_counter() - start, depths


def report(title: str, tally: Tally, wall: float) -> None:
    print(f"\n== {title} ({wall:.1f} s) ==")
    total = sum(len(v) for k, v in tally.latencies.items() if k != "chat")
    print(f"requests: {total} = {total / wall:.0f}/s")
    for kind, values in tally.latencies.items():
        if values:
            rate = f"{len(values) / wall:.1f}/s"
            print(f"  {kind:7s} n={len(values):6d} {rate:>9s}  p50 {pct(values, 0.5) * 1000:7.1f} ms  "
                  f"p99 {pct(values, 0.99) * 1000:7.1f} ms  max {max(values) * 1000:7.1f} ms")
    for status, n in sorted(tally.statuses.items()):
        print(f"  {status:36s} {n}")
    print(f"errors: {sum(tally.errors.values())} {dict(tally.errors) or ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="steady run length")
    ap.add_argument("--clients", type=int, default=50, help="steady concurrent clients (one tenant each)")
    ap.add_argument("--poll", type=float, default=0.02, help="seconds between a client's job reads")
    ap.add_argument("--overload-seconds", type=float, default=30.0, help="overload run length (0: skip)")
    ap.add_argument("--overload-clients", type=int, default=200)
    ap.add_argument("--overload-tenants", type=int, default=4,
                    help="tenants the overload clients share (each has the default 20/s, burst 60)")
    ap.add_argument("--max-depth", type=int, default=100,
                    help="VQ_MAX_QUEUE_DEPTH_LIVE for this run (the steady run never queues more than --clients)")
    args = ap.parse_args()
    print(f"voicequeue load test on {machine()}")
    with tempfile.TemporaryDirectory() as tmp, bench_stack(
            Path(tmp), {"VQ_MAX_QUEUE_DEPTH_LIVE": str(args.max_depth)}) as (stack, conn):
        keys = [keystore.create(conn, f"load{i}")[0] for i in range(max(args.clients, args.overload_tenants))]
        warm = asyncio.run(asyncio.wait_for(run(stack.base_url, keys[:1], 3.0, args.poll, False, conn), 300))[0]
        if warm.latencies["chat"] == []:
            sys.exit(f"the warm-up chat did not complete: {dict(warm.errors)}; see {stack.log_dir}")
        before, cpu_before = memory(stack, conn), cpu_s(stack, conn)
        tally, wall, depths = asyncio.run(run(stack.base_url, keys[:args.clients], args.seconds, args.poll, False,
                                              conn))
        report(f"steady: {args.clients} clients, cached chat + job reads", tally, wall)
        cpu_report(cpu_before, cpu_s(stack, conn), wall, sum(tally.statuses.values()))
        print(f"  llm:live depth max {max(depths, default=0)}")
        after = memory(stack, conn)
        print("  RSS MB before/after: " + ", ".join(f"{k} {before[k]:.0f}/{after[k]:.0f}" for k in before))
        if args.overload_seconds <= 0:
            return
        over_keys = [keys[i % args.overload_tenants] for i in range(args.overload_clients)]
        before, cpu_before = memory(stack, conn), cpu_s(stack, conn)
        tally, wall, depths = asyncio.run(run(stack.base_url, over_keys, args.overload_seconds, args.poll, True,
                                              conn))
        after = memory(stack, conn)
        report(f"overload: {args.overload_clients} clients over {args.overload_tenants} tenants, "
               "submitting without waiting", tally, wall)
        cpu_report(cpu_before, cpu_s(stack, conn), wall, sum(tally.statuses.values()))
        accepted = sum(n for s, n in tally.statuses.items() if s.startswith("submit 202"))
        print(f"  accepted {accepted / wall:.0f}/s; llm:live depth max {max(depths, default=0)} "
              f"(limit {args.max_depth})")
        print("  RSS MB before/after: " + ", ".join(f"{k} {before[k]:.0f}/{after[k]:.0f}" for k in before))
        drain = time.perf_counter()
        while conn.llen("rq:queue:llm:live") and time.perf_counter() - drain < 300:
            time.sleep(0.5)
        print(f"  backlog drained {time.perf_counter() - drain:.1f} s after the overload; RSS MB then: "
              + ", ".join(f"{k} {v:.0f}" for k, v in memory(stack, conn).items()))


if __name__ == "__main__":
    main()
