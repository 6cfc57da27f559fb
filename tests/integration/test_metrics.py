"""The metrics a real producer and worker serve over HTTP (docs/monitoring.md).

Counts come from what the processes report and what the scrape shows, never
from the broker's watermarks (wrong on the dev broker after batches).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.request import urlopen

import pytest
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from kcron.broker import free_port
from tests.conftest import Broker
from tests.support import Kcron, kcron_env

pytestmark = pytest.mark.integration

_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value, label order as the scrape writes it."""
    body = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in body.splitlines():
        found = _SAMPLE.match(line)
        if found:
            samples[found[1] + (found[2] or "")] = float(found[3])
    return samples


def group_size(port: int, mine: str, bootstrap: str, group: str) -> float:
    """kcron_queue_consumers once it counts a member (or after 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        size = scrape(port).get(f"kcron_queue_consumers{{{mine}}}")
        if size is not None and (size >= 1 or time.monotonic() > deadline):
            return size
        assert time.monotonic() < deadline + 5, "no kcron_queue_consumers"
        time.sleep(0.2)


def members_shown(bootstrap: str, group: str) -> bool:
    """Whether the broker lists the group's members: the dev broker (Tansu) answers
    DescribeConsumerGroups with none, so there the metric can only say 0."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    described = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    return bool(described.members)


def test_a_dispatched_run_shows_on_the_producer_and_its_outcome_on_the_worker(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(
        "name=boot @reboot true\nname=broken @reboot false\nname=minute * * * * * true\n"
    )
    worker_port, producer_port = free_port(), free_port()
    env = kcron_env(broker.bootstrap, topic, group, KCRON_BROKER_PROBE_INTERVAL="0.5")
    worker = Kcron(
        ["consume", "--metrics-port", f"{worker_port - 3}+3"], env, tmp_path / "consume.log"
    )
    procs.append(worker)
    worker.wait_for(worker.assigned, 30, "the worker's partitions")
    producer = Kcron(
        ["produce", "--jobs", str(jobs), "--metrics-port", str(producer_port)],
        env,
        tmp_path / "produce.log",
    )
    procs.append(producer)
    ran = worker.wait_for(
        lambda: len(worker.messages("run succeeded")) + len(worker.messages("run failed")) == 2,
        40, "both @reboot runs",
    )  # fmt: skip
    assert ran

    mine = f'queue="{topic}"'
    seen = scrape(worker_port)
    assert seen[f'kcron_runs_total{{kcron_job="boot",outcome="succeeded",{mine}}}'] == 1
    assert seen[f'kcron_runs_total{{kcron_job="broken",outcome="failed",{mine}}}'] == 1
    assert seen[f'kcron_runs_total{{kcron_job="broken",outcome="succeeded",{mine}}}'] == 0
    assert seen[f"kcron_worker_partitions{{{mine}}}"] >= 1
    assert seen["kcron_broker_up"] == 1

    seen = scrape(producer_port)
    assert seen[f'kcron_runs_dispatched_total{{kcron_job="boot",{mine}}}'] == 1
    assert seen[f'kcron_runs_dispatched_total{{kcron_job="minute",{mine}}}'] in (0, 1)
    assert seen[f'kcron_delivery_failures_total{{kcron_job="boot",{mine}}}'] == 0
    assert seen["kcron_producer_active"] == 1
    assert seen["kcron_broker_up"] == 1
    assert seen[f'kcron_job_interval_seconds{{kcron_job="minute",{mine}}}'] == 60
    # The group's size from DescribeConsumerGroups, read every probe interval.
    assert group_size(producer_port, mine, broker.bootstrap, group) >= 1 or not members_shown(
        broker.bootstrap, group
    ), "the broker lists the worker in its group, the metric does not"
    assert f"kcron_queue_lag_messages{{{mine}}}" in scrape(producer_port)

    assert producer.stop() == 0
    assert worker.stop() == 0
