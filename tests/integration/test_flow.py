"""Per-partition flow control: retries waiting out their backoff never pause the main
topic, and a partition paused before a rebalance is fetched again after it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from tests.conftest import Broker
from tests.integration.runs import a_run, create_topics, produce_runs
from tests.support import Kcron, kcron_env, read_lines

pytestmark = pytest.mark.integration


def worker(
    procs: list[Kcron], tmp_path: Path, broker: Broker, topic: str, group: str, **env: str
) -> Kcron:
    proc = Kcron(
        ["consume"],
        kcron_env(broker.bootstrap, topic, group, KCRON_LOG_LEVEL="DEBUG", **env),
        tmp_path / f"consume-{len(procs)}.log",
    )
    procs.append(proc)
    return proc


def test_held_retries_pause_only_their_retry_partition(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    ran = tmp_path / "ran.txt"
    create_topics(broker.bootstrap, topic, 1)
    w = worker(procs, tmp_path, broker, topic, group, KCRON_CONCURRENCY="2",
               KCRON_PREFETCH="32", KCRON_RETRY_BASE="120", KCRON_RETRY_CAP="120")  # fmt: skip
    w.wait_for(lambda: w.assigned() == [0], 30, "the partitions")
    # 40 failures wait 60-120 s in the retry partition: more than a partition may
    # hold (32 here). Sent in two halves, so the main partition never holds that many.
    for half in (1, 2):
        failing = [a_run("false", job="fails", attempts=2) for _ in range(20)]
        produce_runs(broker.bootstrap, topic, failing)
        w.wait_for(lambda n=half: len(w.messages("retry scheduled")) == 20 * n, 30, "retries")
    w.wait_for(
        lambda: any(f"{topic}.retry:0" in r["partitions"] for r in w.messages("fetching paused")),
        30, "the retry partition to pause",
    )  # fmt: skip
    sent = time.monotonic()
    good = [a_run(f"sh -c 'echo $KCRON_RUN_ID >> {ran}'", job="good") for _ in range(5)]
    produce_runs(broker.bootstrap, topic, good)
    w.wait_for(lambda: len(read_lines(ran)) == 5, 20, "the main topic's runs")
    took = time.monotonic() - sent
    paused = {p for r in w.messages("fetching paused") for p in r["partitions"]}
    print(f"\n40 retries held, {paused} paused; 5 new runs done {took:.1f} s after sending")
    assert f"{topic}:0" not in paused
    assert took < 10


@pytest.mark.slow
def test_a_partition_paused_before_a_rebalance_is_fetched_after_it(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    ran = tmp_path / "ran.txt"
    create_topics(broker.bootstrap, topic, 1)
    w = worker(procs, tmp_path, broker, topic, group, KCRON_CONCURRENCY="1", KCRON_PREFETCH="32")
    w.wait_for(lambda: w.assigned() == [0], 30, "the partitions")
    runs = [a_run(f"sh -c 'sleep 0.3; echo $KCRON_RUN_ID >> {ran}'") for _ in range(60)]
    produce_runs(broker.bootstrap, topic, runs)
    w.wait_for(lambda: w.messages("fetching paused"), 20, "the partition to pause")
    # Another member joins the group and leaves: rebalances while the worker's
    # partition is paused; in the end the partition is the worker's again.
    other = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "session.timeout.ms": 6000,
            "enable.auto.commit": False,  # it only takes part; the worker's runs stay its own
        }
    )
    other.subscribe([topic, f"{topic}.retry"])
    deadline = time.monotonic() + 30
    while not w.messages("partitions revoked") and time.monotonic() < deadline:
        other.poll(0.1)
    other.poll(1)
    other.close()
    w.wait_for(lambda: len(w.messages("partitions assigned")) >= 2, 30, "the rebalance")
    paused_before = w.messages("fetching paused")[0]["ts"]
    rebalanced = w.messages("partitions assigned")[1]["ts"]
    assert not [r for r in w.messages("fetching resumed") if paused_before < r["ts"] < rebalanced]
    w.wait_for(lambda: len(set(read_lines(ran))) == 60, 60, "all 60 runs")
