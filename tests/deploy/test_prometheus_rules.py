"""The shipped Prometheus config and alert rules, checked and unit-tested by promtool (Debian's prometheus)."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.conftest import REPO
from tests.deploy.conftest import PROMETHEUS_DIR, tool

ALERTS = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
RULES = [r for g in ALERTS["groups"] for r in g["rules"]]


def promtool(*args: str) -> str:
    out = subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_promtool_checks_the_config_and_rules() -> None:
    assert "SUCCESS" in promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert f"SUCCESS: {len(RULES)} rules found" in promtool("check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))


def test_promtool_unit_tests_pass_and_cover_firing_and_quiet_cases() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))
    spec = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    both = fired & quiet
    assert len(both) >= 3, f"alerts tested both firing and not firing: {sorted(both)}"
    assert fired == {r["alert"] for r in RULES}, "every alert has a firing test"


def test_the_required_alerts_exist_and_each_has_a_runbook_entry() -> None:
    names = {r["alert"] for r in RULES}
    assert {"VoicequeueQueueBacklogGrowing", "VoicequeueNoLiveWorker", "VoicequeueJobErrorRatioHigh",
            "VoicequeueLiveTTFAHigh", "VoicequeueUpstreamRetryStorm", "VoicequeueRedisDown"} <= names
    runbook = (REPO / "docs/operations.md").read_text()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^#+\s+(.+)$", runbook, re.M)}
    for rule in RULES:
        assert rule["labels"]["severity"] in ("warning", "critical")
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert anchor in headings, f"docs/operations.md has no section for {rule['alert']}"
    backlog = next(r for r in RULES if r["alert"] == "VoicequeueQueueBacklogGrowing")
    assert backlog["for"] == "5m"
