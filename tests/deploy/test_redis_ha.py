"""The optional Redis failover deployments, checked without Docker or a cluster: compose's "ha"
profile and the k8s "ha" overlay run a primary, a replica and three Sentinels, and point every
voicequeue process at the Sentinels with names that exist.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import CommonSettings
from shared.connection import sentinel_addresses
from tests.conftest import REPO
from tests.deploy.test_compose import COMPOSE, SERVICES
from tests.deploy.test_k8s import containers, objects
from tests.sentinel_cluster import SentinelCluster, running

MASTER = CommonSettings().redis_sentinel_master
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")


def start_script(command: list[str], data: Path) -> None:
    """Run a Sentinel container's start script in a shell, with `data` as its /data and no redis-sentinel."""
    data.mkdir(parents=True, exist_ok=True)
    script = command[2].replace("/data", str(data)).replace("exec redis-sentinel", "true")
    subprocess.run(["sh", "-c", script], check=True, timeout=10)


def sentinel_conf(command: list[str], tmp: Path) -> dict[str, list[str]]:
    """The config a Sentinel's start script writes: {directive: [arguments of each occurrence]}."""
    start_script(command, tmp)
    out: dict[str, list[str]] = {}
    for line in (tmp / "sentinel.conf").read_text().splitlines():
        words = line.split()
        key = " ".join(words[:2]) if words[0] == "sentinel" else words[0]
        out.setdefault(key, []).append(" ".join(words[2:] if words[0] == "sentinel" else words[1:]))
    return out


def test_compose_ha_profile_has_a_replica_and_three_sentinels(tmp_path: Path) -> None:
    ha = {n for n, s in SERVICES.items() if "ha" in s.get("profiles", [])}
    assert ha == {"redis-replica", *SENTINELS}
    replica = SERVICES["redis-replica"]["command"]
    assert replica[replica.index("--appendonly") + 1] == "yes"
    volumes = set()
    for name in SENTINELS:
        svc = SERVICES[name]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        volumes.update(v.split(":")[0] for v in svc["volumes"])
        conf = sentinel_conf(svc["command"], tmp_path / name)
        (monitor,) = conf["sentinel monitor"]
        master, host, port, quorum = monitor.split()
        assert (master, host, port) == (MASTER, "redis", "6379")
        assert int(quorum) == 2  # a majority of three: one Sentinel alone never fails over
        assert conf["port"] == ["26379"]
        assert conf["sentinel announce-hostnames"] == ["yes"]  # container IPs change on restart
        assert int(conf["sentinel down-after-milliseconds"][0].split()[1]) >= 1000
        # Restarted with its config kept: the script does not overwrite a Sentinel's rewritten file.
        (tmp_path / name / "sentinel.conf").write_text("kept\n")
        start_script(svc["command"], tmp_path / name)
        assert (tmp_path / name / "sentinel.conf").read_text() == "kept\n"
    assert len(volumes) == 3 and volumes <= set(COMPOSE["volumes"]), "each Sentinel keeps its own config"


def redis_start(service: str, sentinels: str = "", **env: str) -> list[str]:
    """The arguments a compose Redis service's start script gives redis-server, run in a real shell with the
    real redis-cli, and compose's `$$` escapes undone."""
    command = list(SERVICES[service]["command"])
    assert command[:2] == ["sh", "-c"] and command[3] == "redis-server"
    script = command[2].replace("$$", "$")
    environment = {k: v for k, v in SERVICES[service]["environment"].items() if not k.startswith("VQ_")}
    done = subprocess.run(["sh", "-c", script, "echo", *command[4:]], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **environment, "VQ_REDIS_SENTINELS": sentinels, **env}, check=True)
    return done.stdout.splitlines()[-1].split()


def replicaof(args: list[str]) -> list[str] | None:
    return args[args.index("--replicaof") + 1:][:2] if "--replicaof" in args else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with running(tmp_path_factory.mktemp("compose-sentinel")) as c:
        yield c


def test_compose_redis_servers_take_their_first_roles_when_no_sentinel_answers() -> None:
    """The first start of the "ha" profile (the Sentinels wait for Redis), and every start without it."""
    for sentinels in ("", "sentinel-1.invalid:26379,sentinel-2.invalid:26379"):
        primary, replica = redis_start("redis", sentinels), redis_start("redis-replica", sentinels)
        assert replicaof(primary) is None and primary[primary.index("--appendonly") + 1] == "yes"
        assert replicaof(replica) == ["redis", "6379"]
    assert SERVICES["redis"]["environment"]["VQ_REDIS_SENTINELS"] == "${VQ_REDIS_SENTINELS:-}"


def test_a_restarted_compose_redis_follows_the_primary_the_sentinels_name(cluster: SentinelCluster) -> None:
    """After a failover the old primary comes back as a replica of the new one, not as a second primary with
    its stale data (which a second failover could promote again, losing acknowledged jobs)."""
    port = cluster.primary_port()
    sentinels = f"sentinel-1.invalid:26379,{cluster.sentinels}"  # one that cannot answer is skipped
    for service in ("redis", "redis-replica"):
        assert replicaof(redis_start(service, sentinels)) == ["127.0.0.1", str(port)]
    # The server the Sentinels name as the primary starts as one, even the one first started as a replica.
    assert replicaof(redis_start("redis-replica", sentinels, REDIS_SELF=f"127.0.0.1:{port}")) is None


def test_compose_documents_the_sentinel_setting_with_real_service_names() -> None:
    header = (REPO / "docker-compose.yml").read_text()
    value = re.search(r"VQ_REDIS_SENTINELS=(\S+)", header)
    assert value, "the compose file says how to point the services at the Sentinels"
    addresses = sentinel_addresses(value.group(1))
    assert [h for h, _ in addresses] == list(SENTINELS) and {p for _, p in addresses} == {26379}
    for name in ("gateway", "asr", "asr-batch", "llm", "tts"):
        assert ".env" in SERVICES[name]["env_file"], f"{name} does not read .env, where the setting goes"


def test_k8s_ha_overlay_runs_a_primary_a_replica_and_three_sentinels() -> None:
    sets = objects("ha", "StatefulSet")
    assert sets["redis"]["spec"]["replicas"] == 2 and sets["redis-sentinel"]["spec"]["replicas"] == 3
    services = objects("ha", "Service")
    for name, service in (("redis", "redis-nodes"), ("redis-sentinel", "redis-sentinel")):
        assert sets[name]["spec"]["serviceName"] == service and services[service]["spec"]["clusterIP"] == "None"
    (redis_c,) = containers(sets["redis"])
    assert "--appendonly" in redis_c["command"] and redis_c["command"][1] == "/conf/redis.conf"
    config = objects("ha", "ConfigMap")
    app = config["voicequeue-config"]["data"]
    scripts = config["redis-ha"]["data"]
    assert app["VQ_REDIS_SENTINEL_MASTER"] == scripts["MASTER"]
    addresses = sentinel_addresses(app["VQ_REDIS_SENTINELS"])
    assert addresses == [(f"redis-sentinel-{i}.redis-sentinel", 26379) for i in range(3)]
    assert "sentinel monitor $MASTER $primary 6379 2" in scripts["sentinel-init.sh"]
    for script in ("find-primary.sh", "redis-init.sh", "sentinel-init.sh"):
        subprocess.run(["sh", "-n", "-c", scripts[script]], check=True, timeout=10)
    pdbs = objects("ha", "PodDisruptionBudget")
    assert pdbs["redis-sentinel"]["spec"]["maxUnavailable"] == 1  # two of three keep the quorum
    # KEDA reads list lengths from any Redis node; the pods write through the Sentinels.
    secret = objects("ha", "Secret")["voicequeue-redis"]
    assert {"url", "address", "password"} <= set(secret["data"])
    assert int(app["VQ_REDIS_WAIT_TIMEOUT_MS"]) > 0
