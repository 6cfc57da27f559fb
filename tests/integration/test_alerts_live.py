"""The alert rules and the dashboard against a real Prometheus scraping real kcron.

Debian's ``prometheus`` binary runs on a free port with a 1 s scrape and evaluation
interval and a copy of etc/prometheus/alerts.yml whose every ``for:`` is 2 s (the
expressions themselves are unchanged: they work from the first scrape, newborn counters
included). It scrapes a real producer and two real workers on the test broker, and a
worker on a broker of this test's own. Drills, each bounded and cleaned up:

- (a) an always-failing job          -> KcronJobFailing, KcronDeadLetters
- (b) garbage bytes on the queue     -> KcronUndecodableMessages
- (c) every worker of the queue stopped while an every-minute job is due
                                     -> KcronNoConsumers, KcronTargetDown;
      then the producer too          -> KcronNoActiveProducer
- (d) the broker frozen (SIGSTOP)    -> KcronBrokerDown (own broker, SIGCONT in finally)

Between (b) and (c), every panel query of etc/grafana/kcron-dashboard.json runs against
this Prometheus: no errors, and the runs, failures, lateness, backlog, running and
dead-letter panels return data. Each drill prints after how many seconds its alerts
went pending or firing.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from kcron.broker import free_port
from tests.conftest import Broker
from tests.integration.runs import own_broker, produce
from tests.support import REPO, Kcron, backfill, debian_tool, kcron_env
from tools.harness import Process

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

ALERTS = REPO / "etc" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "etc" / "grafana" / "kcron-dashboard.json"
SHORT_FOR = "2s"
ALERT_TIMEOUT_S = 45.0
GRAFANA_RANGES = {"$__rate_interval": "1m", "$__range": "10m", "$__interval": "1s"}
# Panels that must show data during the drills, by the start of their titles.
PANELS_WITH_DATA = (
    "Runs/s",
    "Failures by job",
    "Lateness",
    "Backlog / lag",
    "Workers: running",
    "Dead letters",
)
JOBS = "name=always-fails * * * * * false\nname=fine * * * * * true\n"


def prometheus_binary() -> str:
    return debian_tool("prometheus")


class Prometheus:
    """A Prometheus of the test's own: temp config, temp TSDB, 1 s intervals."""

    def __init__(self, tmp_path: Path, targets: dict[str, list[int]]) -> None:
        rules = yaml.safe_load(ALERTS.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = SHORT_FOR
        (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "alerts.yml")],
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}],
                }
                for job, ports in targets.items()
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        argv = [
            prometheus_binary(),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        self.process = Process(argv, dict(os.environ), tmp_path / "prometheus.log")
        self.process.wait_for(self._ready, 30, "Prometheus to be ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self, name: str, **labels: str) -> list[dict[str, Any]]:
        """The pending or firing alerts ``name`` whose labels include ``labels``."""
        return [
            a
            for a in self.api("alerts")["alerts"]
            if a["labels"]["alertname"] == name
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def wait_alert(self, since: float, name: str, **labels: str) -> str:
        """Wait for alert ``name`` pending or firing; '<state> after <s> s' from ``since``."""
        found = self.process.wait_for(
            lambda: self.alerts(name, **labels), ALERT_TIMEOUT_S, f"alert {name} {labels}"
        )
        return f"{found[0]['state']} after {time.monotonic() - since:.1f} s"

    def active(self) -> str:
        """Every alert pending or firing now, for the figures."""
        names = {a["labels"]["alertname"] for a in self.api("alerts")["alerts"]}
        return " ".join(sorted(names))

    def stop(self) -> None:
        self.process.stop(timeout=10)


def up(prom: Prometheus, job: str, port: int) -> bool:
    return any(
        s["value"][1] == "1" for s in prom.query(f'up{{job="{job}",instance="127.0.0.1:{port}"}}')
    )


def start(procs: list[Kcron], tmp_path: Path, bootstrap: str, topic: str, *args: str) -> Kcron:
    """A kcron process in the queue's default group (kcron-<topic>): the producer's
    kcron_queue_consumers counts that group's members."""
    log = tmp_path / f"{args[0]}-{len(procs)}.log"
    proc = Kcron(list(args), kcron_env(bootstrap, topic, KCRON_PARTITIONS="2"), log)
    procs.append(proc)
    return proc


def check_dashboard(prom: Prometheus) -> dict[str, int]:
    """Every panel query evaluates; returns the number of series each panel got."""
    board = json.loads(DASHBOARD.read_text())
    series: dict[str, int] = {}
    for panel in board["panels"]:
        total = 0
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_RANGES.items():
                expr = expr.replace(variable, value)
            total += len(prom.query(expr))  # api() asserts status success
        series[panel["title"]] = total
    return series


def test_alerts_fire_in_live_drills_and_dashboard_queries_answer(
    broker: Broker, tmp_path: Path, procs: list[Kcron]
) -> None:
    topic = f"kcron.test.{uuid.uuid4().hex[:12]}"
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(JOBS)
    producer_port, worker_ports, frozen_port = free_port(), [free_port(), free_port()], free_port()
    prom = Prometheus(
        tmp_path,
        {"kcron-producer": [producer_port], "kcron-worker": [*worker_ports, frozen_port]},
    )
    figures: dict[str, str] = {}
    t0 = time.monotonic()
    try:
        workers = [
            start(procs, tmp_path, broker.bootstrap, topic, "consume", "--metrics-port", str(p))
            for p in worker_ports
        ]
        producer = start(
            procs, tmp_path, broker.bootstrap, topic,
            "produce", "--jobs", str(jobs), "--metrics-port", str(producer_port),
        )  # fmt: skip
        ports = [("kcron-producer", producer_port)] + [("kcron-worker", p) for p in worker_ports]
        producer.wait_for(
            lambda: all(up(prom, job, port) for job, port in ports), 60, "every target scraped"
        )
        workers[0].wait_for(
            lambda: sorted(p for w in workers for p in w.assigned()) == [0, 1],
            60,
            "the workers to share the queue's partitions",
        )
        consumers = f'max(kcron_queue_consumers{{queue="{topic}"}})'
        producer.wait_for(lambda: prom.query(consumers), 30, "the producer's queue probe")
        # Apache Kafka lists the group's 2 members; the dev broker (Tansu) answers
        # DescribeConsumerGroups with none. Either way the scraped workers hold the
        # partitions, so KcronNoConsumers stays quiet while they run.
        time.sleep(6)  # one more probe round after the group settled
        members = int(float(prom.query(consumers)[0]["value"][1]))
        figures["queue members seen by the producer"] = str(members)
        assert members in (0, 2), members
        assert not prom.alerts("KcronNoConsumers", queue=topic)
        figures["setup"] = f"{time.monotonic() - t0:.1f} s"

        # (a) an always-failing job: 3 runs of each job, due in the last 3 minutes.
        since = time.monotonic()
        backfill(broker.bootstrap, topic, jobs, "now-3m", "now")
        queue = {"queue": topic}
        figures["a KcronJobFailing"] = prom.wait_alert(
            since, "KcronJobFailing", kcron_job="always-fails", **queue
        )
        figures["a KcronDeadLetters"] = prom.wait_alert(
            since, "KcronDeadLetters", kcron_job="always-fails", kind="exhausted", **queue
        )
        assert not prom.alerts("KcronJobFailing", kcron_job="fine"), "a job that succeeds"
        figures["a all active"] = prom.active()

        # (b) malformed messages: bytes that are no run.
        since = time.monotonic()
        produce(broker.bootstrap, topic, [(None, b"not a run"), (b"k", b"\xff\xfe{")])
        figures["b KcronUndecodableMessages"] = prom.wait_alert(
            since, "KcronUndecodableMessages", **queue
        )
        figures["b all active"] = prom.active()

        # The dashboard: every query answers; the main panels have data by now.
        series = check_dashboard(prom)
        empty = [t for t in series if t.startswith(PANELS_WITH_DATA) and not series[t]]
        assert not empty, f"panels without data: {empty} ({series})"
        figures["dashboard"] = ", ".join(f"{t}: {n}" for t, n in series.items())

        # (c) every worker of the queue stopped; the every-minute jobs stay due.
        assert not prom.alerts("KcronTargetDown", instance=f"127.0.0.1:{worker_ports[0]}")
        since = time.monotonic()
        for worker in workers:
            assert worker.stop(timeout=30) == 0
        figures["c KcronTargetDown"] = prom.wait_alert(
            since, "KcronTargetDown", instance=f"127.0.0.1:{worker_ports[0]}"
        )
        figures["c KcronNoConsumers"] = prom.wait_alert(since, "KcronNoConsumers", **queue)
        figures["c all active"] = prom.active()
        # ... and the producer: no active producer is left.
        since = time.monotonic()
        assert producer.stop(timeout=30) == 0
        figures["c KcronNoActiveProducer"] = prom.wait_alert(since, "KcronNoActiveProducer")

        # (d) the broker frozen: a worker on a broker of the test's own.
        with own_broker(tmp_path) as embedded:
            assert embedded.process is not None
            frozen = start(
                procs, tmp_path, embedded.bootstrap, f"kcron.test.{uuid.uuid4().hex[:12]}",
                "consume", "--metrics-port", str(frozen_port),
            )  # fmt: skip
            frozen.wait_for(
                lambda: prom.query(f'kcron_broker_up{{instance="127.0.0.1:{frozen_port}"}} == 1'),
                60,
                "the worker to report its broker up",
            )
            since = time.monotonic()
            os.kill(embedded.process.pid, signal.SIGSTOP)
            figures["d KcronBrokerDown"] = prom.wait_alert(
                since, "KcronBrokerDown", instance=f"127.0.0.1:{frozen_port}"
            )
            figures["d all active"] = prom.active()
            os.kill(embedded.process.pid, signal.SIGCONT)
            frozen.stop(timeout=30)
    finally:
        prom.stop()
        figures["total"] = f"{time.monotonic() - t0:.1f} s"
        print("\nlive alert drills: " + "; ".join(f"{k}: {v}" for k, v in figures.items()))
