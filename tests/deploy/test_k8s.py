"""The Kubernetes manifests: every overlay renders with `kubectl kustomize`, every object validates
against the Kubernetes schemas (kubernetes-validate, offline), and the KEDA objects are checked
structurally against what KEDA's redis scaler reads and what rq writes.
"""

from __future__ import annotations

import functools
import importlib
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared import queues
from shared.config import CommonSettings
from tests.deploy.conftest import DEPLOY, WORKERS, tool
from tests.deploy.test_compose import PORT_SETTING, settings_fields
from voicequeue.cli import parser

OVERLAYS = sorted(p.name for p in (DEPLOY / "k8s/overlays").iterdir() if (p / "kustomization.yaml").exists())
K8S_VERSION = "1.30.0"
POOLS = [f"{stage}-{pool}" for stage in WORKERS for pool in queues.PRIORITIES]
# How long each worker's longest job may run (rq timeout scales with audio; docs/deploy.md).
# The llm stage's longest job is a call analysis, bounded by its own rq timeout.
LONGEST_JOB_S = {"asr": 1800, "llm": int(CommonSettings().job_timeout_llm_s), "tts": 120}


@functools.cache
def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(DEPLOY / "k8s/overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in render(overlay) if d["kind"] == kind}


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_validates(overlay: str) -> None:
    docs = render(overlay)
    assert len(docs) > 20
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked structurally below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError
        checked += 1
    assert checked >= 15
    # The validator is not a rubber stamp.
    bad = next(d for d in docs if d["kind"] == "Deployment")
    bad = {**bad, "spec": {**bad["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployments_have_probes_resources_pdbs_and_real_settings(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    assert set(deployments) == {"gateway", "llm-server", *POOLS}
    pdbs = objects(overlay, "PodDisruptionBudget")
    covered = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for p in pdbs.values()}
    for name, dep in deployments.items():
        assert name in covered, f"{name} has no PodDisruptionBudget"
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in containers(dep):
            assert {"readinessProbe", "livenessProbe"} <= set(c), f"{name}: probes missing"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: {kind} missing"
            args = parser().parse_args(c["command"][1:])
            assert c["command"][0] == "voicequeue" and args.fn.__module__ == "voicequeue.cli"
            service = name.split("-")[0] if name in POOLS else name
            fields = settings_fields(service)
            env = {e["name"]: e.get("value") for e in c["env"]}
            for var in env:
                assert var.startswith("VQ_") and var[3:].lower() in fields, f"{name}: {var} is not a setting"
            port = int(env[f"VQ_{PORT_SETTING[service].upper()}"])
            named = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert port in named.values()
            for probe in ("readinessProbe", "livenessProbe"):
                assert named[c[probe]["httpGet"]["port"]] == port
    config = objects(overlay, "ConfigMap")["voicequeue-config"]["data"]
    common = settings_fields("llm")
    for var in config:
        assert var[3:].lower() in common, f"ConfigMap sets {var}, which no settings class reads"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_has_a_service_and_a_cpu_hpa(overlay: str) -> None:
    service = objects(overlay, "Service")["gateway"]
    gateway = objects(overlay, "Deployment")["gateway"]
    assert service["spec"]["selector"].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    hpa = objects(overlay, "HorizontalPodAutoscaler")["gateway"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and 0 < metric["resource"]["target"]["averageUtilization"] <= 90
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in gateway["spec"], "the HPA owns the replica count"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_each_worker_pool_on_its_rq_list(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    scaled = objects(overlay, "ScaledObject")
    auths = objects(overlay, "TriggerAuthentication")
    assert set(scaled) == set(POOLS)
    for name, so in scaled.items():
        stage, pool = name.split("-")
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                             "cooldownPeriod", "advanced", "triggers", "idleReplicaCount", "fallback"}
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert target["metadata"]["name"] == name and "replicas" not in target["spec"], "KEDA owns the count"
        (trigger,) = spec["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "redis"
        assert meta["listName"] == f"rq:queue:{queues.name(stage, pool)}"
        assert meta["listName"].removeprefix("rq:queue:") in queues.all_names()
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
        assert int(meta["listLength"]) >= 1 and int(meta["activationListLength"]) == 0
        auth = auths[trigger["authenticationRef"]["name"]]
        params = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
        assert "address" in params or "address" in meta
        assert spec["minReplicaCount"] >= 1 if pool == "live" else spec["minReplicaCount"] == 0
        assert spec["maxReplicaCount"] > max(spec["minReplicaCount"], 1)
        # Running jobs are not in the list: scale-down waits, and SIGTERM leaves time to finish the job.
        grace = target["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        window = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
            "stabilizationWindowSeconds"]
        assert grace >= LONGEST_JOB_S[stage], f"{name}: {grace} s grace is shorter than its longest job"
        if pool == "batch":
            assert spec["cooldownPeriod"] >= LONGEST_JOB_S[stage] and window >= LONGEST_JOB_S[stage]
        # llm/tts pools work live first, then batch, so either may hold a batch job; asr-live may hold a long
        # /v1/audio/transcriptions upload: the same grace everywhere.
        assert grace == deployments[f"{stage}-live"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_asr_live_pool_takes_only_live_and_the_batch_pool_only_batch(overlay: str) -> None:
    """As the Procfile and compose: a live turn never waits behind a recorded call on an in-process worker."""
    from services.asr.config import AsrSettings

    deployments = objects(overlay, "Deployment")
    scaled = objects(overlay, "ScaledObject")
    for pool in queues.PRIORITIES:
        name = f"asr-{pool}"
        (c,) = containers(deployments[name])
        env = {e["name"]: e.get("value") for e in c["env"]}
        taken = AsrSettings.model_validate(
            {"asr_worker_priorities": yaml.safe_load(env["VQ_ASR_WORKER_PRIORITIES"])}).asr_worker_priorities
        assert taken == [pool], f"{name} takes {taken}"
        # KEDA scales the pool on exactly the list its workers drain.
        listed = scaled[name]["spec"]["triggers"][0]["metadata"]["listName"]
        assert listed == f"rq:queue:{queues.name('asr', pool)}"
        assert int(env.get("VQ_ASR_WORKER_NICE") or 0) == (19 if pool == "batch" else 0)
    # The llm and tts pools take both queues, live first (their workers have no priority setting).
    for stage in ("llm", "tts"):
        for pool in queues.PRIORITIES:
            (c,) = containers(deployments[f"{stage}-{pool}"])
            assert not any("PRIORITIES" in e["name"] for e in c["env"])


def test_dev_runs_its_own_redis_and_prod_expects_a_managed_one() -> None:
    dev_sets = objects("dev", "StatefulSet")
    redis = dev_sets["redis"]
    (c,) = containers(redis)
    assert "--appendonly" in c["command"] and redis["spec"]["volumeClaimTemplates"]
    secret = objects("dev", "Secret")["voicequeue-redis"]
    assert {"url", "address", "password"} <= set(secret["data"])
    assert "StatefulSet" not in {d["kind"] for d in render("prod")}
    assert "Secret" not in {d["kind"] for d in render("prod")}, "prod's Redis secret is created out of band"
    for so in objects("prod", "ScaledObject").values():
        assert so["spec"]["triggers"][0]["metadata"]["enableTLS"] == "true"
    # Every worker pod reads the same Secret KEDA reads.
    for name in POOLS:
        env = containers(objects("prod", "Deployment")[name])[0]["env"]
        url = next(e for e in env if e["name"] == "VQ_REDIS_URL")
        assert url["valueFrom"]["secretKeyRef"] == {"name": "voicequeue-redis", "key": "url"}


def test_worker_modules_exist_for_every_pool() -> None:
    for stage in WORKERS:
        assert callable(importlib.import_module(f"services.{stage}.worker").main)
