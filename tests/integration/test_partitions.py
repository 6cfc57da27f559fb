"""What 1, 2 or 3 partitions do to two workers: the experiment's own cases, asserted.

Each test runs a case of the partitions experiment (tools/experiment/)
against the session broker: real ``kcron consume`` processes in one group, a
backfill of 120 runs keyed by fresh UUIDs, every run identified by its run id
in the workers' JSON logs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kcron.kafka import UnsupportedByBroker
from tests.conftest import Broker
from tests.support import REPO
from tools.experiment import CaseResult, Skipped, run_case, write_report

pytestmark = pytest.mark.integration

RUNS = 120


@pytest.fixture(scope="module")
def two_consumers(
    broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[int], CaseResult]:
    """The sweep's case for P partitions and 2 consumers, run once per module."""
    done: dict[int, CaseResult] = {}

    def case(partitions: int) -> CaseResult:
        if partitions not in done:
            workdir = tmp_path_factory.mktemp(f"p{partitions}c2")
            done[partitions] = run_case(broker.bootstrap, partitions, 2, RUNS, workdir=workdir)
        return done[partitions]

    return case


def assert_every_run_once(result: CaseResult) -> None:
    where = f"{result.name} (logs in {result.log_dir})"
    assert result.runs == RUNS
    assert result.lost == 0, f"{result.lost} runs never executed: {where}"
    assert result.duplicates == 0, f"{result.duplicates} runs executed twice: {where}"
    assert result.failed == 0, where
    assert result.executed == RUNS, where
    assert sum(c.runs for c in result.consumers) == RUNS
    assert sum(result.runs_by_partition.values()) == RUNS
    for consumer in result.consumers:
        # A worker only ever runs what its own partitions hold.
        assert set(consumer.runs_by_partition) <= set(consumer.final_partitions) | set(
            consumer.partitions
        ), consumer


@pytest.mark.parametrize("partitions", [1, 2, 3])
def test_two_consumers_share_the_partitions(
    two_consumers: Callable[[int], CaseResult], partitions: int
) -> None:
    result = two_consumers(partitions)
    assert_every_run_once(result)
    first, second = result.consumers
    owned = sorted(p for c in result.consumers for p in c.partitions)
    assert owned == list(range(partitions)), "every partition has exactly one owner"
    if partitions == 1:
        busy, idle = (first, second) if first.runs else (second, first)
        assert busy.partitions == (0,) and busy.runs == RUNS, "one consumer did all the work"
        assert idle.partitions == () and idle.runs == 0, "the other one idled"
    elif partitions == 2:
        assert [len(c.partitions) for c in result.consumers] == [1, 1]
        assert first.runs > 0 and second.runs > 0, "each consumer did work"
    else:
        assert sorted(len(c.partitions) for c in result.consumers) == [1, 2]
        assert all(n > 0 for n in result.runs_by_partition.values()), (
            "UUID keys reach every partition"
        )
        for consumer in result.consumers:
            assert consumer.runs == sum(result.runs_by_partition[p] for p in consumer.partitions)


@pytest.mark.slow
def test_a_consumer_stopped_mid_run_loses_no_run(broker: Broker, tmp_path: Path) -> None:
    result = run_case(broker.bootstrap, 2, 2, RUNS, stop_one_after=RUNS // 4, workdir=tmp_path)
    assert_every_run_once(result)  # SIGTERM: the running job finishes and is committed
    recovery = result.recovery
    assert recovery is not None
    stopped = next(c for c in result.consumers if c.stopped)
    survivor = next(c for c in result.consumers if not c.stopped)
    assert stopped.exit_code == 0 and stopped.runs > 0
    assert recovery.in_flight and recovery.in_flight_finished, "stopped mid-run, run finished"
    assert survivor.final_partitions == (0, 1), "the survivor took the partition over"
    moved = recovery.moved_partitions
    assert moved == stopped.partitions and len(moved) == 1
    assert survivor.runs_by_partition.get(moved[0], 0) > 0, "and ran its remaining runs"
    assert recovery.reassigned_s is not None and recovery.resumed_s is not None
    assert 0 < recovery.reassigned_s <= recovery.resumed_s < 30


def test_growing_the_topic_keeps_every_run(broker: Broker, tmp_path: Path) -> None:
    try:
        result = run_case(broker.bootstrap, 2, 2, RUNS, grow_to=3, workdir=tmp_path)
    except UnsupportedByBroker as exc:
        pytest.skip(f"{broker.kind} broker: {exc}")
    assert_every_run_once(result)
    assert result.runs_after_growth is not None
    assert result.runs_after_growth.get(2, 0) > 0, "the new partition gets new runs"
    assert result.runs_by_partition[2] == result.runs_after_growth[2], "old runs did not move"


def test_report_and_chart_hold_the_measured_table(
    two_consumers: Callable[[int], CaseResult], tmp_path: Path
) -> None:
    rows = [two_consumers(p) for p in (1, 2, 3)]
    skipped = Skipped("2 partitions, 2 consumers, grown to 3 live", 2, 2, "no CreatePartitions")
    report, chart = write_report([*rows, skipped], tmp_path, "a test broker", RUNS, 12.0)
    text = report.read_text()
    assert "a test broker" in text and "Date: " in text
    assert "| 1 partition, 2 consumers " in text
    assert "one consumer idle" in text and "an even split" in text
    assert "takes two partitions" in text
    assert "skipped: no CreatePartitions" in text
    assert chart is not None and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({chart.name})" in text


def test_make_target_command_prints_the_table_and_writes_the_report(
    broker: Broker, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.experiment",
            "partitions",
            "--partitions",
            "2",
            "--no-extras",
            "--bootstrap-servers",
            broker.bootstrap,
            "--report-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| 2 partitions, 2 consumers" in result.stdout
    assert "120/120" in result.stdout
    assert f"broker: external (given bootstrap servers) at {broker.bootstrap}" in result.stderr
    assert "[1/1] 2 partitions, 2 consumers" in result.stderr, "progress while it runs"
    assert (tmp_path / "partitions-experiment.md").exists()
    assert (tmp_path / "partitions-experiment.png").exists()
