"""kcron.worker.runner with real processes: what the loop's fake pool stands in for."""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from pathlib import Path

import pytest

from kcron.executor import Outcome
from kcron.metrics import WorkerMetrics
from kcron.worker.runner import Done, Job, JobRunner, ThreadPool, run_environment
from tests.unit.fake_worker_kafka import T0, TOPIC, a_run
from tests.unit.test_executor import is_gone, reaped

pytestmark = pytest.mark.timeout(20)


class _FirstLine(logging.Handler):
    """Sets ``seen`` when the job prints its first line."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.set()


def a_pool(concurrency: int = 2) -> tuple[ThreadPool, queue.SimpleQueue[Done]]:
    done: queue.SimpleQueue[Done] = queue.SimpleQueue()
    runner = JobRunner(1024, TOPIC, WorkerMetrics(), lambda: T0)
    return ThreadPool(runner, concurrency, done.put), done


def a_job(command: str, n: int = 0) -> Job:
    return Job(a_run("real", n=n, command=command, max_attempts=1), (TOPIC, 0), n, 1)


def test_a_run_comes_back_with_its_result_and_logs(caplog):
    caplog.set_level(logging.INFO, logger="kcron")
    pool, done = a_pool()
    job = a_job("sh -c 'echo hello'")
    pool.submit(job)
    back = done.get(timeout=10)
    assert back.job == job and back.result is not None
    assert back.result.outcome is Outcome.SUCCEEDED
    assert [j.offset for j in pool.pending()] == [0]  # until the loop takes it
    pool.taken(job)
    assert pool.pending() == []
    said = [r.getMessage() for r in caplog.records]
    assert said == ["run started", "hello", "run succeeded"]
    pool.close()


def test_kill_ends_running_groups_at_once(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="kcron")
    pid_file = tmp_path / "child.pid"
    first = _FirstLine()
    job_log = logging.getLogger("kcron.job")
    job_log.addHandler(first)
    pool, done = a_pool()
    try:
        with reaped(pid_file):
            pool.submit(a_job(f"sh -c 'sleep 30 & echo $! > {pid_file}; echo up; wait'"))
            assert first.seen.wait(10)
            started = time.monotonic()
            assert pool.kill() == 1
            back = done.get(timeout=10)
            assert time.monotonic() - started < 1.0  # no SIGTERM grace first
            assert back.result is not None and back.result.exit_code == -signal.SIGKILL
            assert is_gone(int(pid_file.read_text()))
    finally:
        job_log.removeHandler(first)
        pool.close()


def test_after_kill_nothing_queued_starts():
    pool, done = a_pool(concurrency=1)
    pool.kill()
    pool.submit(a_job("true"))
    back = done.get(timeout=10)
    assert back.result is None  # never started: left for redelivery


def test_cancel_queued_hands_back_only_runs_not_started():
    pool, done = a_pool(concurrency=1)
    gate = threading.Event()
    blocker = a_job("sleep 30", n=0)
    waiting = a_job("true", n=1)
    # Keep the one thread busy until the queued job was handed back.
    runner_execute = pool._runner.execute

    def execute(job, cancel, on_spawn):  # type: ignore[no-untyped-def]
        gate.wait(10)
        return Done(job, None)

    pool._runner.execute = execute  # type: ignore[method-assign]
    pool.submit(blocker)
    pool.submit(waiting)
    pool.cancel_queued([(TOPIC, 0)])
    assert [j.offset for j in pool.pending()] == [0]
    gate.set()
    assert done.get(timeout=10).job == blocker
    pool._runner.execute = runner_execute  # type: ignore[method-assign]
    pool.close()


def test_run_environment_adds_the_runs_identity():
    run = a_run(attempt=2, max_attempts=5)
    env = run_environment(run, {"PATH": os.defpath})
    assert env["PATH"] == os.defpath
    assert env["KCRON_RUN_ID"] == run.id
    assert env["KCRON_JOB"] == "backup"
    assert env["KCRON_SCHEDULED_FOR"] == "2026-12-01T08:00:00.000Z"
    assert (env["KCRON_ATTEMPT"], env["KCRON_MAX_ATTEMPTS"]) == ("2", "5")
