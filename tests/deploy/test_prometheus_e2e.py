"""A real Prometheus (Debian's) scraping the real local stack with the shipped config, over loopback.

One voice turn goes through; PromQL over the HTTP API must then see it, and every metric the
dashboard and the alerts use must exist in what the services actually export.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import httpx
import pytest
import yaml

from services.llm.config import LlmSettings
from shared import queues
from tests.deploy.conftest import DEPLOY, PROMETHEUS_DIR, WORKERS, Prometheus
from tests.stack import Stack, free_port

JOBS = ("gateway", "asr", "asr-batch", "llm", "tts")  # the scrape jobs of prometheus.yml
# PromQL words that look like metric names but are functions, keywords or label names.
NOT_METRICS = {"sum", "max", "min", "avg", "count", "rate", "deriv", "by", "and", "or", "le", "on",
               "histogram_quantile", "without", "ignoring", "increase", "absent"}


@pytest.fixture(scope="module")
def turn(deploy_stack: Stack, prometheus: Prometheus, speech: Any) -> dict[str, Any]:
    """Run one voice turn once the Prometheus sees every target up; return the job record."""
    prometheus.wait_for('up{job=~"gateway|asr|asr-batch|llm|tts"}',
                        lambda r: len(r) == len(JOBS) and all(s["value"][1] == "1" for s in r))
    with httpx.Client(base_url=deploy_stack.base_url, timeout=300) as client, \
            (speech / "en_short/jfk.flac").open("rb") as f:
        r = client.post("/v1/turns", files={"file": ("jfk.flac", f)})
        assert r.status_code == 202, r.text
        links = r.json()
        audio = client.get(links["audio_url"], params={"wait": 300})
        assert audio.status_code == 200, audio.text
        job = client.get(links["status_url"]).json()
    assert job["status"] == "done", job
    return dict(job)


def exprs_in_dashboard() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana/voicequeue.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def exprs_in_alerts() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    # Drop label matchers, grouping clauses and range selectors, then keep the identifiers left.
    bare = re.sub(r"\{[^}]*\}|\bby\s*\([^)]*\)|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if w not in NOT_METRICS}


def exported_names(prometheus: Prometheus) -> set[str]:
    """Sample names every scraped target exposes, read from the targets' own /metrics pages."""
    names = {"up"}  # Prometheus adds `up` to every scrape
    for target in prometheus.api("targets")["activeTargets"]:
        if target["labels"]["job"] not in JOBS:
            continue
        text = httpx.get(target["scrapeUrl"], timeout=10).text
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
            family = name.removesuffix("_total")
            names |= {"counter": {f"{family}_total"}, "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"},
                      }.get(kind, {name})
    return names


def test_prometheus_sees_the_turn(turn: dict[str, Any], prometheus: Prometheus) -> None:
    assert turn["plan"] == ["asr", "llm", "tts"]
    # One turn: exactly one ASR and one LLM execution, and TTS done at least once (sentences may be split).
    done = prometheus.wait_for(
        'sum by (stage) (voicequeue_jobs_total{outcome="done"})',
        lambda r: {s["metric"]["stage"] for s in r} == {"asr", "llm", "tts"})
    counts = {s["metric"]["stage"]: float(s["value"][1]) for s in done}
    assert counts["asr"] == 1 and counts["llm"] == 1 and counts["tts"] >= 1, counts
    assert prometheus.value('sum(voicequeue_jobs_total{outcome="failed"})') in (None, 0.0)

    depth = prometheus.query('voicequeue_queue_depth{job="gateway"}')
    assert {s["metric"]["queue"] for s in depth} == set(queues.all_names())
    # Every queue drains once the turn is over (a last sentence's job may still be finishing).
    prometheus.wait_for('voicequeue_queue_depth{job="gateway"}', lambda r: all(float(s["value"][1]) == 0 for s in r),
                        timeout_s=20)
    for stage in WORKERS:  # each worker reports its own queues too
        own = prometheus.query(f'voicequeue_queue_depth{{job="{stage}"}}')
        assert {s["metric"]["queue"] for s in own} == set(queues.names_for(stage))

    rtf_count = prometheus.value('sum(voicequeue_realtime_factor_count{stage="asr"})')
    assert rtf_count == 1.0
    rtf_sum = prometheus.value('sum(voicequeue_realtime_factor_sum{stage="asr"})')
    assert rtf_sum is not None and 0 < rtf_sum < 2, "ASR on CPU runs well under real time for an 11 s clip"
    le_one = prometheus.value('sum(voicequeue_realtime_factor_bucket{stage="asr", le="1.0"})')
    assert le_one == 1.0

    workers = {s["metric"]["queue"]: float(s["value"][1]) for s in prometheus.query("voicequeue_workers")}
    assert set(workers) == set(queues.all_names())
    # One process per stage; the llm one registers an rq worker per job it runs at once (one per slot).
    jobs = LlmSettings().llm_worker_jobs
    assert workers == {q: jobs if q.startswith("llm:") else 1 for q in workers}, workers
    assert prometheus.value("voicequeue_redis_up") == 1.0
    waits = prometheus.value('sum(voicequeue_queue_wait_seconds_count{priority="live"})')
    assert waits is not None and waits >= 3


def test_every_dashboard_and_alert_metric_is_exported(turn: dict[str, Any], prometheus: Prometheus) -> None:
    exported = exported_names(prometheus)
    exprs = exprs_in_dashboard() + exprs_in_alerts()
    assert len(exprs) > 25
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        used |= names
        prometheus.query(expr)  # valid PromQL: the query API answers "success"
    missing = used - exported
    assert not missing, f"used in the dashboard or alerts but not exported: {sorted(missing)}"
    # Spot-check against the list: the figures an operator needs are all on the dashboard.
    for needed in ("voicequeue_http_requests_total", "voicequeue_http_request_seconds_bucket",
                   "voicequeue_queue_depth", "voicequeue_queue_oldest_age_seconds",
                   "voicequeue_stage_run_seconds_bucket", "voicequeue_queue_wait_seconds_bucket",
                   "voicequeue_ttfa_seconds_bucket", "voicequeue_realtime_factor_bucket",
                   "voicequeue_llm_time_to_first_token_seconds_bucket", "voicequeue_llm_tokens_total",
                   "voicequeue_cache_hits_total", "voicequeue_cache_misses_total", "voicequeue_retries_total",
                   "voicequeue_fallbacks_total", "voicequeue_workers", "voicequeue_jobs_total"):
        assert needed in used, f"{needed} is on no dashboard panel or alert"


def test_alert_rules_load_and_stay_quiet_on_a_healthy_stack(turn: dict[str, Any], prometheus: Prometheus) -> None:
    groups = prometheus.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(exprs_in_alerts())
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    firing = [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, firing


def test_image_health_checks_pass_against_live_services(deploy_stack: Stack) -> None:
    """The HEALTHCHECK script of every image, run with the env each service runs with."""
    script = str(DEPLOY / "docker/healthcheck.py")
    checks = {"gateway": ("VQ_GATEWAY_PORT", "/healthz"), "asr": ("VQ_ASR_METRICS_PORT", "/"),
              "llm": ("VQ_LLM_METRICS_PORT", "/"), "tts": ("VQ_TTS_METRICS_PORT", "/"),
              "llm-server": ("VQ_LLM_SERVER_PORT", "/health")}
    for service, (var, path) in checks.items():
        ok = subprocess.run([sys.executable, script, var, "1", path], env=deploy_stack.env, capture_output=True)
        assert ok.returncode == 0, (service, ok.stderr)
    closed = {**os.environ, "VQ_GATEWAY_PORT": str(free_port())}
    bad = subprocess.run([sys.executable, script, "VQ_GATEWAY_PORT", "1", "/healthz"], env=closed,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "unhealthy" in bad.stderr
