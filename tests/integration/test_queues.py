"""Queues on a real broker with real ``kcron`` processes: each job's runs go to its
queue's topic and run only on that queue's workers, with the queue's own retries
and dead letters; a queue nobody serves keeps its runs; a reload makes new queues.

Each test names its queues after its own fresh topic: ``{topic}`` is the default
queue, ``{topic}-a`` and so on the others.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kcron import deadletter, kafka
from kcron.message import decode
from tests.conftest import Broker
from tests.integration.runs import dead_letters, settings_for
from tests.support import REPO, Kcron, backfill, kcron_env, read_lines

pytestmark = pytest.mark.integration

HOUR = ("2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z")  # five runs of an every-minute job


def queue_worker(
    procs: list[Kcron], tmp_path: Path, broker: Broker, queue: str, **env: str
) -> Kcron:
    """``kcron consume --topic QUEUE`` with no --group: the queue's own default group."""
    proc = Kcron(
        ["consume", "--topic", queue],
        kcron_env(broker.bootstrap, queue, **env),
        tmp_path / f"consume-{queue}-{len(procs)}.log",
    )
    procs.append(proc)
    return proc


def kcron_cli(broker: Broker, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kcron", *args],
        env=kcron_env(broker.bootstrap, topic),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ran_jobs(worker: Kcron) -> list[str]:
    return [r["job"] for r in worker.messages("run succeeded")]


def test_every_run_executes_once_on_a_worker_of_its_own_queue(
    broker: Broker, topic: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    queues = {"default": topic, "a": f"{topic}-a", "b": f"{topic}-b"}
    ran = tmp_path / "ran.txt"
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(
        f"name=on-default * * * * * sh -c 'echo $KCRON_RUN_ID >> {ran}'\n"
        f"name=on-a queue={queues['a']} * * * * * sh -c 'echo $KCRON_RUN_ID >> {ran}'\n"
        f"name=on-b queue={queues['b']} * * * * * sh -c 'echo $KCRON_RUN_ID >> {ran}'\n"
    )
    workers = {name: queue_worker(procs, tmp_path, broker, q) for name, q in queues.items()}

    backfill(broker.bootstrap, topic, jobs, *HOUR)

    workers["a"].wait_for(lambda: len(read_lines(ran)) >= 15, 60, "15 runs")
    time.sleep(1)  # anything beyond 15 would be a duplicate; give it a moment to show
    ids = read_lines(ran)
    assert len(ids) == 15 and len(set(ids)) == 15, "every run exactly once"
    for name, worker in workers.items():
        assert ran_jobs(worker) == [f"on-{name}"] * 5, f"worker of {name} ran {ran_jobs(worker)}"
        assert {r["queue"] for r in worker.messages("run started")} == {queues[name]}
        (started,) = worker.messages("worker started")
        assert started["group"] == f"kcron-{queues[name]}", "a group of its own per queue"
        assert started["retry_topic"] == f"{queues[name]}.retry"
        assert started["dlq_topic"] == f"{queues[name]}.dlq"
    executed = {r["run"] for w in workers.values() for r in w.messages("run succeeded")}
    assert len(executed) == 15


def test_a_queues_retries_and_dead_letters_stay_in_it_and_requeue_brings_the_run_back(
    broker: Broker, topic: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    qb = f"{topic}-b"
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(
        "name=fine * * * * * true\n"
        f"name=doomed queue={qb} attempts=2 * * * * * sh -c 'echo try $KCRON_ATTEMPT; exit 3'\n"
    )
    env = {"KCRON_RETRY_BASE": "0.5", "KCRON_RETRY_CAP": "1"}
    default_worker = queue_worker(procs, tmp_path, broker, topic, **env)
    worker_b = queue_worker(procs, tmp_path, broker, qb, **env)

    backfill(broker.bootstrap, topic, jobs, HOUR[0], "2026-01-01T00:01:00Z")

    (letter,) = dead_letters(broker.bootstrap, qb, 1)
    record = letter.record
    assert record["kind"] == "exhausted" and record["job"] == "doomed"
    assert record["source"]["topic"] == f"{qb}.retry", "the retry went through b.retry"
    assert record["run"]["queue"] == qb
    tries = worker_b.messages("run started")
    assert [(r["attempt"], r.get("topic")) for r in tries] == [(1, None), (2, f"{qb}.retry")]
    assert {r["queue"] for r in worker_b.messages("retry scheduled")} == {qb}
    assert {r["queue"] for r in worker_b.messages("dead letter")} == {qb}
    default_worker.wait_for(lambda: ran_jobs(default_worker), 30, "the default queue's run")
    assert [r["job"] for r in default_worker.messages("run started")] == ["fine"]
    settings = settings_for(broker.bootstrap, topic)
    assert deadletter.read_topic(settings, f"{topic}.dlq", 1.0) == [], "nothing in another dlq"

    # Every dead letter the job file owns, from one command, with its queue.
    listed = kcron_cli(broker, topic, "dlq", "list", "--jobs", str(jobs), "--idle", "1")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert "QUEUE" in header and qb in row and letter.id in row
    assert f"1 dead letter in {topic}.dlq, {qb}.dlq" in listed.stderr

    requeued = kcron_cli(broker, topic, "dlq", "requeue", str(letter.id), "--topic", qb)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.rstrip().endswith(f"to {qb} as attempt 1 of 2")
    worker_b.wait_for(
        lambda: len(worker_b.messages("run started")) == 4, 30, "the requeued run's two tries"
    )
    again = worker_b.messages("run started")[2:]
    assert [(r["run"], r["attempt"]) for r in again] == [(letter.id, 1), (letter.id, 2)]
    assert [r["job"] for r in default_worker.messages("run started")] == ["fine"]


@pytest.mark.slow
def test_runs_of_a_queue_nobody_serves_wait_and_run_once_a_worker_comes(
    broker: Broker, topic: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    qc = f"{topic}-c"
    ran = tmp_path / "ran.txt"
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(f"name=later queue={qc} * * * * * sh -c 'echo $KCRON_RUN_ID >> {ran}'\n")
    default_worker = queue_worker(procs, tmp_path, broker, topic)

    backfill(broker.bootstrap, topic, jobs, *HOUR)

    waiting = deadletter.read_topic(settings_for(broker.bootstrap, qc), qc, 1.0)
    assert [decode(m.value()).queue for m in waiting] == [qc] * 5, "kept in their topic"
    default_worker.wait_for(lambda: default_worker.messages("partitions assigned"), 30, "join")
    time.sleep(2)
    assert read_lines(ran) == [] and default_worker.messages("run started") == []

    worker_c = queue_worker(procs, tmp_path, broker, qc)
    worker_c.wait_for(lambda: len(read_lines(ran)) >= 5, 60, "the five waiting runs")
    time.sleep(1)
    assert sorted(read_lines(ran)) == sorted(decode(m.value()).id for m in waiting)
    assert ran_jobs(worker_c) == ["later"] * 5
    assert default_worker.messages("run started") == []


def reload_with_a_new_queue(
    broker: Broker, topic: str, tmp_path: Path, procs: list[Kcron], new_queue: str
) -> tuple[Kcron, Path]:
    """A running producer on a file without ``new_queue``, then a job on it added."""
    jobs = tmp_path / "jobs.cron"
    jobs.write_text("name=old @yearly true\n")
    producer = Kcron(
        ["produce", "--jobs", str(jobs)],
        kcron_env(broker.bootstrap, topic, KCRON_PARTITIONS="2"),
        tmp_path / "produce.log",
    )
    procs.append(producer)
    producer.wait_for(lambda: producer.messages("became the active producer"), 60, "the role")
    settings = settings_for(broker.bootstrap, topic)
    assert kafka.topic_partitions(settings, new_queue) is None
    ran = tmp_path / "ran.txt"
    jobs.write_text(
        "name=old @yearly true\n"
        f"name=new queue={new_queue} * * * * * sh -c 'echo $KCRON_RUN_ID >> {ran}'\n"
    )
    producer.wait_for(lambda: producer.messages("job file reloaded"), 30, "the reload")
    (ready,) = producer.messages("queues ready")
    assert ready["queues"] == [new_queue]
    assert [r["topic"] for r in producer.messages("created topic")][-1] == new_queue
    assert kafka.topic_partitions(settings, new_queue) == 2, "made with --partitions"
    return producer, ran


def test_a_reload_that_adds_a_queue_creates_its_topic(
    broker: Broker, topic: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    reload_with_a_new_queue(broker, topic, tmp_path, procs, f"{topic}-new")


@pytest.mark.slow  # waits for the next minute's tick: up to a minute and a half
def test_a_reload_that_adds_a_queue_sends_its_runs_there(
    broker: Broker, topic: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    new_queue = f"{topic}-new"
    producer, ran = reload_with_a_new_queue(broker, topic, tmp_path, procs, new_queue)
    default_worker = queue_worker(procs, tmp_path, broker, topic)
    worker = queue_worker(procs, tmp_path, broker, new_queue)
    worker.wait_for(lambda: read_lines(ran), 90, "the new job's first run")
    (dispatched,) = [r for r in producer.messages("run dispatched") if r["job"] == "new"][:1]
    assert dispatched["queue"] == new_queue
    assert ran_jobs(worker)[:1] == ["new"]
    assert default_worker.messages("run started") == []
