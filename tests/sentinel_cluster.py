"""A Redis primary, a replica and three Sentinels as real processes on loopback (Debian's redis-server
and redis-sentinel), with short timeouts so a failover takes seconds. Used by the failover test and
by `bench/redis_wait.py`.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.stack import free_port

MASTER = "voicequeue"


def _binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if not found:
        raise RuntimeError(f"{name} is not installed (Debian: apt-get install redis-server redis-sentinel)")
    return found


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process on port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout_s} s")


@dataclass
class SentinelCluster:
    root: Path
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    args: dict[str, list[str]] = field(default_factory=dict)

    @property
    def sentinels(self) -> str:
        """The VQ_REDIS_SENTINELS value."""
        return ",".join(f"127.0.0.1:{self.ports[f'sentinel{i}']}" for i in range(3))

    @property
    def env(self) -> dict[str, str]:
        """What points a voicequeue process at this cluster (VQ_REDIS_URL keeps only the db number)."""
        return {"VQ_REDIS_SENTINELS": self.sentinels, "VQ_REDIS_SENTINEL_MASTER": MASTER,
                "VQ_REDIS_URL": "redis://sentinel-managed/0"}

    def _spawn(self, name: str, args: list[str]) -> None:
        self.args[name] = args
        log = (self.root / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.ports[name], self.procs[name])

    def _server(self, name: str, *extra: str) -> None:
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        self.ports[name] = self.ports.get(name) or free_port()
        # As production (AOF every second); diskless sync without delay: a replica is in sync at once.
        self._spawn(name, [_binary("redis-server"), "--bind", "127.0.0.1", "--port", str(self.ports[name]),
                           "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                           "--protected-mode", "no", "--repl-diskless-sync", "yes",
                           "--repl-diskless-sync-delay", "0", *extra])

    def start(self) -> SentinelCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self._server("primary")
        self._server("replica", "--replicaof", "127.0.0.1", str(self.ports["primary"]))
        self.wait_replica_in_sync()
        for i in range(3):
            name = f"sentinel{i}"
            self.ports[name] = free_port()
            conf = self.root / f"{name}.conf"  # Sentinel rewrites its own config: one file each
            conf.write_text("\n".join([
                f"port {self.ports[name]}", "bind 127.0.0.1", "protected-mode no", f"dir {self.root}",
                f"sentinel monitor {MASTER} 127.0.0.1 {self.ports['primary']} 2",
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}",
                f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {MASTER} 1", ""]))
            self._spawn(name, [_binary("redis-sentinel"), str(conf)])
        self.wait_sentinels_agree()
        return self

    def sentinel(self, i: int = 0) -> redis.Redis:
        return redis.Redis(port=self.ports[f"sentinel{i}"], socket_timeout=1, decode_responses=True)

    def primary_port(self) -> int | None:
        """The primary's port as the first Sentinel that answers sees it."""
        for i in range(3):
            with contextlib.suppress(redis.RedisError):
                addr = self.sentinel(i).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
                if addr:
                    return int(addr[1])
        return None

    def wait_replica_in_sync(self, timeout_s: float = 15) -> None:
        conn = redis.Redis(port=self.ports["replica"], decode_responses=True)
        deadline = time.monotonic() + timeout_s
        while conn.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not sync")
            time.sleep(0.05)

    def wait_sentinels_agree(self, timeout_s: float = 20) -> None:
        """Until every Sentinel knows the replica and its two peers (else a failover cannot be voted)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready = 0
            for i in range(3):
                with contextlib.suppress(redis.RedisError):
                    info = self.sentinel(i).sentinel_master(MASTER)
                    ready += int(info["num-slaves"]) >= 1 and int(info["num-other-sentinels"]) >= 2
            if ready == 3:
                return
            time.sleep(0.1)
        raise TimeoutError("the Sentinels did not discover each other and the replica")

    def kill_primary(self) -> int:
        """SIGKILL whichever server is the primary now; returns its port."""
        port = self.primary_port()
        name = next(n for n in ("primary", "replica") if self.ports[n] == port)
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)
        return int(port or 0)

    def restart(self, name: str) -> None:
        """Start a killed server again the way deploy/k8s/overlays/ha/redis-ha.yaml does: following the
        primary the Sentinels name, if that is another server.

        Started as it was, an old primary comes back as a second primary holding its stale data, and
        Sentinel may even promote it again: one run of the failover test saw a Sentinel declare the new
        primary down a second after the switch, promote the restarted old one, and the new primary
        resync from it, dropping a job it had acknowledged."""
        args = list(self.args[name])
        if "--replicaof" in args:
            at = args.index("--replicaof")
            del args[at:at + 3]
        primary = self.primary_port()
        if primary and primary != self.ports[name]:
            args += ["--replicaof", "127.0.0.1", str(primary)]
        self._spawn(name, args)

    def wait_new_primary(self, old_port: int, timeout_s: float = 60) -> int:
        """The port of the promoted replica, once a Sentinel names it and it answers as a primary."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port not in (None, old_port):
                with contextlib.suppress(redis.RedisError):
                    if redis.Redis(port=port, socket_timeout=1).info("replication")["role"] == "master":
                        return int(port)
            time.sleep(0.02)
        raise TimeoutError(f"no new primary within {timeout_s} s")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def running(root: Path) -> Iterator[SentinelCluster]:
    """A started cluster under `root`, stopped on exit (the tests' module fixtures)."""
    cluster = SentinelCluster(root)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
