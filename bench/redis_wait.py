"""What waiting for a replica (Redis WAIT) adds to a submission, through the real gateway.

Starts a primary, a replica and three Sentinels on loopback (Debian's redis-server and
redis-sentinel), then a gateway found-through-Sentinel twice per round: with WAIT off
(VQ_REDIS_WAIT_TIMEOUT_MS=0) and on (the default with Sentinels, 500 ms at most). No worker runs, so
the measured latency is the gateway's alone: POST /v1/chat until its 202, one client, back to back.
Rounds alternate the two settings so background load hits both alike.

Usage: `python bench/redis_wait.py [--submissions 300] [--rounds 2]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline import machine, pct  # noqa: E402
from tests.reliability.partial import partial_stack  # noqa: E402
from tests.sentinel_cluster import SentinelCluster  # noqa: E402


def measure(cluster: SentinelCluster, tmp: Path, wait_ms: int, n: int) -> list[float]:
    env = {**cluster.env, "VQ_REDIS_WAIT_TIMEOUT_MS": str(wait_ms), "VQ_RATE_LIMIT_PER_S": "0",
           "VQ_MAX_QUEUE_DEPTH_LIVE": str(10 * n), "VQ_LOG_LEVEL": "WARNING"}
    with partial_stack(env["VQ_REDIS_URL"], tmp, (), env) as stack, \
            httpx.Client(base_url=stack.base_url, timeout=30) as client:
        body = {"text": "What are your opening hours?", "speak": False}
        for _ in range(20):  # warm connections and code paths
            assert client.post("/v1/chat", json=body).status_code == 202
        took = []
        for _ in range(n):
            start = time.perf_counter()
            r = client.post("/v1/chat", json=body)
            took.append(time.perf_counter() - start)
            assert r.status_code == 202, r.text
        return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submissions", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vq-wait-") as tmp:
        cluster = SentinelCluster(Path(tmp) / "cluster").start()
        try:
            runs: dict[str, list[float]] = {"no WAIT": [], "WAIT 1": []}
            for r in range(args.rounds):
                runs["no WAIT"] += measure(cluster, Path(tmp) / f"off{r}", 0, args.submissions)
                runs["WAIT 1"] += measure(cluster, Path(tmp) / f"on{r}", 500, args.submissions)
        finally:
            cluster.stop()
    print(f"\n{args.rounds} x {args.submissions} submissions per setting, POST /v1/chat to 202, one client; "
          f"{machine()}; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    print(f"{'setting':10s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for name, values in runs.items():
        print(f"{name:10s} {statistics.median(values) * 1000:8.2f} {pct(values, 0.95) * 1000:8.2f}")
    base, waited = statistics.median(runs["no WAIT"]), statistics.median(runs["WAIT 1"])
    print(f"added by WAIT at p50: {(waited - base) * 1000:.2f} ms ({waited / base:.2f}x the submission without it)")


if __name__ == "__main__":
    main()
