"""etc/grafana and the compose `monitoring` profile: the dashboard parses, every panel
queries the provisioned Prometheus with a valid expression, and the provisioning paths
are where docker-compose.yml mounts the files.

The live test (tests/integration/test_alerts_live.py) runs every panel's query against a
real Prometheus scraping real kcron processes; here only what needs no server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "etc" / "grafana"
DASHBOARD = GRAFANA / "kcron-dashboard.json"
# Issue 14's panels, by a word of their titles.
REQUIRED_PANELS = [
    "Runs/s by outcome and queue",
    "Failures by job",
    "Lateness p50 / p99",
    "Duration by job",
    "Backlog / lag by queue",
    "Workers: running",
    "Dead letters",
    "Producers: active / standby",
    "Broker reachable",
]
# Grafana's variables, replaced by fixed ranges where Prometheus evaluates the query.
GRAFANA_RANGES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        if in_ci():
            pytest.fail(f"{name} is missing in CI ({package})")
        pytest.skip(f"{name} is not installed ({package})")
    return found


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr with Grafana's variables replaced) for every target."""
    queries = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_RANGES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def provisioned_datasource() -> dict[str, Any]:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = doc["datasources"]
    assert isinstance(source, dict)
    return source


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    return services


def test_every_panel_queries_the_provisioned_prometheus() -> None:
    board = dashboard()
    uid = provisioned_datasource()["uid"]
    titles = [panel["title"] for panel in board["panels"]]
    for wanted in REQUIRED_PANELS:
        assert any(title.startswith(wanted) for title in titles), f"no panel {wanted!r}"
    assert len({panel["id"] for panel in board["panels"]}) == len(titles)
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == uid, panel["title"]


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule): a typo fails here, not in Grafana."""
    promtool = tool("promtool", "Debian package prometheus")
    rules = [
        {"record": f"kcron:dashboard_query:{n}", "expr": expr}
        for n, (_title, expr) in enumerate(panel_queries(dashboard()))
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_provisioning_matches_the_compose_mounts() -> None:
    services = compose_services()
    grafana, prometheus = services["grafana"], services["prometheus"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"][:2])
    assert mounts["./etc/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_in_container = Path(mounts["./etc/grafana/kcron-dashboard.json"])
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "kcron.yml").read_text())
    (provider,) = providers["providers"]
    assert Path(provider["options"]["path"]) == dashboard_in_container.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == str(dashboard_in_container)
    # the datasource is the compose service, on Prometheus's port
    assert provisioned_datasource()["url"] == "http://prometheus:9090"
    assert "./etc/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_prometheus_targets_name_the_compose_services() -> None:
    services = compose_services()
    for name in ("kcron-producer", "kcron-worker"):
        groups = yaml.safe_load(
            (REPO / "etc" / "prometheus" / "targets" / f"{name}.yml").read_text()
        )
        for target in (t for group in groups for t in group["targets"]):
            host, port = target.split(":")
            assert host in services, f"{name}: {target} is no compose service"
            assert int(port) in (9400, 9401, 9402, 9501), target


def test_compose_monitoring_profile() -> None:
    """docker-compose 1.29 renders the profile (no Docker engine needed for `config`)."""
    compose = tool("docker-compose", "Debian package docker-compose")
    result = subprocess.run(
        [compose, "--profile", "monitoring", "config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DOCKER_HOST_IP": "127.0.0.1"},
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name, port in (("prometheus", 9090), ("grafana", 3000)):
        service = services[name]
        assert service["profiles"] == ["monitoring"], name
        assert f"127.0.0.1:{port}:{port}/tcp" in service["ports"], name
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert any(
        v.endswith("/etc/prometheus:/etc/prometheus:ro") for v in services["prometheus"]["volumes"]
    )
    # the kcron services stay out of the profile: `up` without it starts no monitoring
    assert "profiles" not in services["kcron"]
