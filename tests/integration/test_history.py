"""Run history on a real broker: the workers' run events, ``kcron runs``, ``kcron jobs``
and ``kcron trigger`` (docs/operating.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker
from tests.integration.runs import a_run, create_topics, produce_runs
from tests.support import REPO, Kcron, backfill, kcron_env, worker

pytestmark = pytest.mark.integration

JOBS = """\
name=fine                 * * * * *   echo all good
name=broken attempts=2    * * * * *   sh -c 'echo try $KCRON_ATTEMPT; echo oops >&2; exit 3'
"""


def kcron(
    broker: Broker, topic: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "kcron", *args],
        env=kcron_env(broker.bootstrap, topic, KCRON_DLQ_IDLE="1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def runs_json(broker: Broker, topic: str, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(kcron(broker, topic, "runs", "--json", *args).stdout))


def wait_runs(broker: Broker, topic: str, done: Any, timeout: float = 40) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = runs_json(broker, topic, "--limit", "1000")
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_runs_jobs_and_trigger_after_a_backfill(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(JOBS)
    create_topics(broker.bootstrap, topic, 2)
    w = worker(procs, tmp_path, broker, topic, group, KCRON_RETRY_BASE="0.2", KCRON_RETRY_CAP="1")
    backfill(broker.bootstrap, topic, jobs, "-2m", "now")  # two runs of each job

    def settled(found: list[dict[str, Any]]) -> bool:
        return (
            len(found) == 4
            and all(r["outcome"] != "running" for r in found)
            and all(r["attempt"] == 2 for r in found if r["job"] == "broken")
        )

    found = wait_runs(broker, topic, settled)
    assert settled(found), found
    for run in found:
        expected = ("succeeded", 0) if run["job"] == "fine" else ("failed", 3)
        assert (run["outcome"], run["exit_code"]) == expected, run
        assert run["scheduled_for"] and run["started_at"] and run["finished_at"]
        assert run["trigger"] == "schedule"
    due = [r["scheduled_for"] for r in found]
    assert due == sorted(due, reverse=True)

    # every attempt of a retried run, with its output tail
    broken = next(r for r in found if r["job"] == "broken")
    detail = kcron(broker, topic, "runs", broken["id"]).stdout
    print(detail)
    assert "attempt 1/2  started" in detail and "attempt 2/2  finished" in detail
    assert "next: retry at" in detail and "next: dead_lettered" in detail
    assert "try 1" in detail and "try 2" in detail and "oops" in detail

    table = kcron(broker, topic, "runs", "--outcome", "failed").stdout
    print(table)
    assert table.count("broken") == 2 and "fine" not in table

    listing = kcron(broker, topic, "jobs", "--jobs", str(jobs)).stdout
    print(listing)
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert "succeeded" in rows["fine"] and "failed" in rows["broken"]
    jobs_json = json.loads(kcron(broker, topic, "jobs", "--jobs", str(jobs), "--json").stdout)
    assert all(row["next_run"] and row["active"] == 0 for row in jobs_json)

    # run now, once, through the job's queue, recorded as manual
    said = kcron(broker, topic, "trigger", "fine", "--jobs", str(jobs)).stdout
    run_id = said.split()[2]

    def manual_done(found: list[dict[str, Any]]) -> bool:
        return any(r["id"] == run_id and r["outcome"] == "succeeded" for r in found)

    found = wait_runs(broker, topic, manual_done)
    [manual] = [r for r in found if r["id"] == run_id]
    assert (manual["trigger"], manual["outcome"], manual["job"]) == ("manual", "succeeded", "fine")
    assert len([r for r in w.messages("run started") if r["run"] == run_id]) == 1
    missing = kcron(broker, topic, "trigger", "nope", "--jobs", str(jobs), check=False)
    assert missing.returncode == 66 and "no job named nope" in missing.stderr


@pytest.mark.slow
def test_a_worker_killed_before_its_events_are_confirmed_commits_nothing(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    """SIGKILL between a run's end and its events' confirmation: the next worker runs it
    again (its offset was not committed), and the history ends with that run finished."""
    create_topics(broker.bootstrap, topic, 1)
    marker = tmp_path / "ran"
    run = a_run(f"sh -c 'echo x >> {marker}'", job="once")
    # A producer that lingers a minute: the run's events sit unsent in the worker.
    first = worker(procs, tmp_path, broker, topic, group, KCRON_KAFKA_OPTIONS="linger.ms=60000")
    produce_runs(broker.bootstrap, topic, [run])
    first.wait_for(lambda: first.messages("run succeeded"), 30, "the first execution")
    time.sleep(2.5)  # over the auto-commit interval (1 s): had the offset been stored, it is
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    assert runs_json(broker, topic) == []  # nothing reached the history
    second = worker(procs, tmp_path, broker, topic, group)
    second.wait_for(lambda: second.messages("run succeeded"), 40, "the run again")
    assert marker.read_text().count("x") == 2
    found = wait_runs(broker, topic, lambda f: bool(f) and f[0]["outcome"] == "succeeded")
    assert [(r["id"], r["outcome"]) for r in found] == [(run.id, "succeeded")]
