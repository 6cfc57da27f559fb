"""overlap=forbid on a real broker with real workers (docs/operations.md#overlap).

A job slower than its interval: runs 1.5 s apart of a 2.5 s job, written as
the producer writes them (keyed by job name), to a topic of three partitions
read by two workers, the second joining midway so a rebalance moves
partitions. No two executions of the forbid job overlap in time, every run is
executed or logged as skipped, and none is lost. The same runs of an allow job
do overlap, which shows the check can see an overlap.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kcron.message import RunMessage
from tests.conftest import Broker
from tests.integration.runs import a_run, create_topics, produce
from tests.support import Kcron, worker

pytestmark = pytest.mark.integration

RUNS = 12
EVERY_S = 1.5
JOB_S = 2.5


def runs_of(job: str, overlap: str, log: Path, first: datetime) -> list[RunMessage]:
    command = (
        f"echo start $KCRON_RUN_ID $(date +%s%N) >> {log}; sleep {JOB_S}; "
        f"echo end $KCRON_RUN_ID $(date +%s%N) >> {log}"
    )
    return [
        dataclasses.replace(
            a_run(command, job, shell=True, scheduled_for=first + timedelta(seconds=EVERY_S * i)),
            overlap=overlap,
        )
        for i in range(RUNS)
    ]


def executions(log: Path) -> list[tuple[int, int, str]]:
    """(start ns, end ns, run id) of every execution that ended, by start."""
    starts: dict[str, int] = {}
    done: list[tuple[int, int, str]] = []
    for line in log.read_text().splitlines() if log.exists() else []:
        what, run_id, ns = line.split()
        if what == "start":
            starts[run_id] = int(ns)
        else:
            done.append((starts.pop(run_id), int(ns), run_id))
    return sorted(done)


def overlaps(done: list[tuple[int, int, str]]) -> list[tuple[str, str]]:
    return [(a[2], b[2]) for a, b in itertools.pairwise(done) if b[0] < a[1]]


@pytest.mark.slow
def test_a_forbid_job_slower_than_its_interval_never_overlaps_across_workers(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    create_topics(broker.bootstrap, topic, 3)
    env = {"KCRON_GRACE": "3", "KCRON_CONCURRENCY": "4"}
    first = worker(procs, tmp_path, broker, topic, group, **env)
    first.wait_for(lambda: len(first.assigned()) == 3, 60, "the first worker's assignment")

    slow_log, fast_log = tmp_path / "slow.txt", tmp_path / "fast.txt"
    start = datetime.now(UTC) + timedelta(seconds=2)
    slow = runs_of("slow", "forbid", slow_log, start)
    fast = runs_of("fast", "allow", fast_log, start)
    sent = produce(broker.bootstrap, topic, [(r.key, r.encode()) for r in slow + fast])
    assert not [s for s in sent if s.error]
    assert len({s.partition for s in sent[:RUNS]}) == 1, "a forbid job's runs share a partition"

    time.sleep(2 + RUNS * EVERY_S / 2)  # midway: a second worker joins, partitions move
    second = worker(procs, tmp_path, broker, topic, group, **env)
    workers = [first, second]

    def settled() -> bool:
        ids = {r["run"] for w in workers for r in w.messages("run succeeded")}
        ids |= {r["run"] for w in workers for r in w.messages("run skipped")}
        return {r.id for r in slow + fast} <= ids

    second.wait_for(settled, 90, "every run executed or skipped")
    time.sleep(JOB_S)  # a duplicate execution would show by now

    skipped = [r for w in workers for r in w.messages("run skipped")]
    ran = executions(slow_log)
    assert overlaps(ran) == [], "two executions of the forbid job overlapped"
    executed_ids = {run_id for _s, _e, run_id in ran}
    skipped_ids = {r["run"] for r in skipped}
    assert executed_ids | skipped_ids == {r.id for r in slow}, "a forbid run was lost"
    assert not executed_ids & skipped_ids, "a run both executed and skipped"
    assert len(executed_ids) >= 2 and skipped_ids, (len(executed_ids), len(skipped_ids))
    assert {r["job"] for r in skipped} == {"slow"}
    assert {r["reason"] for r in skipped} == {"an earlier run of this job is still running"}
    assert {r["running"] for r in skipped} <= {r.id for r in slow}, "skipped for its own job"

    fast_ran = executions(fast_log)
    assert {run_id for _s, _e, run_id in fast_ran} == {r.id for r in fast}
    assert overlaps(fast_ran), "the allow job's runs overlap: the check can see one"
    assert second.assigned(), "the second worker took partitions over"
