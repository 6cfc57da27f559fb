"""Exactly-once dispatch: a standby producer, and R3 (producer killed at random points)."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.support import Kcron, kcron_env

pytestmark = pytest.mark.integration


def producer(
    procs: list[Kcron], tmp_path: Path, broker: Broker, topic: str, jobs: Path, *extra: str
) -> Kcron:
    log = tmp_path / f"produce-{len(procs)}.log"
    proc = Kcron(
        ["produce", "--jobs", str(jobs), "--producer-id", "r3", *extra],
        kcron_env(broker.bootstrap, topic),
        log,
    )
    procs.append(proc)
    return proc


@pytest.mark.slow
def test_a_standby_producer_takes_over_when_the_active_one_stops(
    broker: Broker, topic: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    jobs = tmp_path / "jobs.cron"
    jobs.write_text("name=yearly @yearly echo once a year\n")
    first = producer(procs, tmp_path, broker, topic, jobs)
    first.wait_for(lambda: first.messages("became the active producer"), 30, "first active")
    second = producer(procs, tmp_path, broker, topic, jobs)
    second.wait_for(
        lambda: second.messages(
            "standing by: another producer with the same producer id is active"
        ),
        30, "second to join as a standby",
    )  # fmt: skip
    assert second.messages("became the active producer") == [], "two active producers"

    stopped_at = time.monotonic()
    assert first.stop() == 0
    second.wait_for(lambda: second.messages("became the active producer"), 30, "takeover")
    takeover = time.monotonic() - stopped_at
    print(f"standby took over {takeover:.1f} s after the active producer stopped")
    assert takeover < 15


def _ran(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines()]  # type: ignore[misc]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_r3_producer_killed_at_random_points_dispatches_each_tick_exactly_once(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    ran = tmp_path / "ran.txt"
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(
        "".join(
            f"name=job{i} * * * * * sh -c 'echo $KCRON_JOB $KCRON_SCHEDULED_FOR >> {ran}'\n"
            for i in range(3)
        )
    )
    worker = Kcron(["consume"], kcron_env(broker.bootstrap, topic, group), tmp_path / "w.log")
    procs.append(worker)
    rng = random.Random(20261128)
    current = producer(procs, tmp_path, broker, topic, jobs)
    current.wait_for(lambda: current.messages("became the active producer"), 30, "active")
    started = datetime.now(UTC)

    def next_boundary() -> float:
        return (time.time() // 60 + 1) * 60

    # Kill points: at the dispatch moment (1 s before the minute, dispatch-ahead),
    # right after a boundary, and at random points in between.
    plan = ["dispatch", "random", "after", "random", "dispatch"]
    kills = 0
    for where in plan:
        boundary = next_boundary()
        if where == "dispatch":
            target = boundary - 1.0 + rng.uniform(-0.05, 0.05)
        elif where == "after":
            target = boundary + rng.uniform(0.0, 0.3)
        else:
            target = time.time() + rng.uniform(5, 40)
        time.sleep(max(0.0, target - time.time()))
        current.signal(signal.SIGKILL)
        current.proc.wait(10)
        kills += 1
        current = producer(procs, tmp_path, broker, topic, jobs)
        current.wait_for(lambda p=current: p.messages("became the active producer"), 45, "restart")
    # Let the last restart settle and dispatch at least one more tick.
    end_boundary = next_boundary() + 1
    time.sleep(max(0.0, end_boundary - time.time()) + 4)
    stopped = datetime.now(UTC)
    assert current.stop() == 0
    time.sleep(2)

    runs = _ran(ran)
    per_job: dict[str, list[datetime]] = {}
    for job, when in runs:
        per_job.setdefault(job, []).append(
            datetime.strptime(when, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        )
    duplicates = sum(n - 1 for n in Counter(runs).values() if n > 1)
    lost = 0
    for ticks in per_job.values():
        expected, t = set(), min(ticks)
        while t <= max(ticks):
            expected.add(t)
            t += timedelta(minutes=1)
        lost += len(expected - set(ticks))
    last_due = stopped.replace(second=0, microsecond=0)
    assert all(max(t) >= last_due - timedelta(minutes=1) for t in per_job.values()), (
        "the producer stopped dispatching before the end"
    )
    minutes = (stopped - started).total_seconds() / 60
    print(
        f"R3: {len(runs)} runs over {minutes:.1f} min, {kills} kill -9 of the producer, "
        f"lost {lost}, duplicated {duplicates}"
    )
    assert set(per_job) == {"job0", "job1", "job2"}
    assert duplicates == 0
    assert lost == 0
    assert all(len(t) >= 3 for t in per_job.values())
