"""etc/prometheus: the config and alert rules load in Prometheus's own checker, the
rule unit tests (alerts.test.yml) pass, and every alert carries what an operator needs.

promtool comes from Debian's ``prometheus`` package (.ci/run installs it). Without it
these tests skip, except under CI (``CI=true``), where a missing promtool fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import debian_tool

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "etc" / "prometheus"
RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/kcron/kcron/blob/main/docs/runbooks.md#"
SCRAPE_JOBS = ["kcron-producer", "kcron-worker"]
# "or (x > 0 unless x offset W)", the newborn-counter branch of alerts.yml's rules.
NEWBORN_BRANCH = re.compile(
    r"\n\s*or\n\s*\((?:[^()]|\([^()]*\))*?unless(?:[^()]|\([^()]*\))*?offset \d+m\s*\)"
)
# Issue 14's drills, each with the alerts that must cover it.
DRILLS = {
    "broker down": {"KcronBrokerDown"},
    "a job always fails": {"KcronJobFailing", "KcronDeadLetters"},
    "backlog, lag, late runs": {"KcronQueueBacklogGrowing", "KcronRunsLate"},
    "failures in one queue": {"KcronQueueFailing"},
    "a slow job blocks others": {"KcronWorkerSaturated"},
    "no consumers, target down": {"KcronNoConsumers", "KcronTargetDown"},
    "malformed messages": {"KcronUndecodableMessages", "KcronMessagesRejected"},
    "no active producer": {"KcronNoActiveProducer"},
    "dead man's switch": {"KcronJobNotSucceeding"},
}


def promtool() -> str:
    return debian_tool("promtool")


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=PROM, capture_output=True, text=True, timeout=120
    )


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown page."""
    anchors = set()
    for line in markdown.splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            text = heading.group(1).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_prometheus_config_is_valid() -> None:
    result = run_promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_alert_rules_are_valid() -> None:
    result = run_promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_rule_tests_catch_the_newborn_counter_trap(tmp_path: Path) -> None:
    """Without their `x > 0 unless x offset W` branch, the "happened lately" alerts miss a
    counter born at its first increment, and alerts.test.yml notices."""
    rules = (PROM / "alerts.yml").read_text()
    plain = NEWBORN_BRANCH.sub("", rules)
    assert rules.count(" offset ") - plain.count(" offset ") >= 8, "the branches were not found"
    (tmp_path / "alerts.yml").write_text(plain)
    shutil.copy(PROM / "alerts.test.yml", tmp_path / "alerts.test.yml")
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    missed = set(re.findall(r"alertname: (\w+), time:", result.stdout + result.stderr))
    assert {
        "KcronJobFailing",
        "KcronDeadLetters",
        "KcronQueueFailing",
        "KcronUndecodableMessages",
        "KcronMessagesRejected",
        "KcronDeliveryFailures",
    } <= missed


def test_scrape_jobs_are_the_fixed_names() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == SCRAPE_JOBS
    assert config["rule_files"] == ["alerts.yml"]


def test_every_drill_has_its_alerts() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    for drill, alerts in DRILLS.items():
        assert alerts <= names, f"{drill}: missing {alerts - names}"


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    anchors = github_anchors(RUNBOOKS.read_text())
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        assert "{{" in notes["summary"] + notes["description"], f"{name}: no value or label"
        url = notes["runbook_url"]
        assert url.startswith(RUNBOOK_URL), f"{name}: {url}"
        assert url.removeprefix(RUNBOOK_URL) in anchors, f"{name}: no section {url} in runbooks"


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never quiet"
