"""The core promise, against a real broker with real ``kcron`` processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.conftest import Broker
from tests.support import REPO, Kcron, backfill, kcron_env, read_lines

pytestmark = pytest.mark.integration


def start(
    procs: list[Kcron],
    tmp_path: Path,
    broker: Broker,
    topic: str,
    group: str,
    *args: str,
    name: str = "consume",
    **env: str,
) -> Kcron:
    log = tmp_path / f"{name}-{len(procs)}.log"
    proc = Kcron(list(args) or ["consume"], kcron_env(broker.bootstrap, topic, group, **env), log)
    procs.append(proc)
    return proc


def wait_until_group_stable(consumers: list[Kcron], partitions: int, timeout: float = 30) -> None:
    """Every partition owned by exactly one of ``consumers``."""

    def stable() -> bool:
        owned = [p for c in consumers for p in c.assigned()]
        return sorted(owned) == list(range(partitions))

    consumers[0].wait_for(stable, timeout, "the group to settle")


def test_two_consumers_share_60_runs_each_exactly_once(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    ran = tmp_path / "ran.txt"
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(f"name=tick * * * * * sh -c 'echo $KCRON_RUN_ID >> {ran}'\n")
    consumers = [start(procs, tmp_path, broker, topic, group) for _ in range(2)]
    wait_until_group_stable(consumers, 2)

    backfill(broker.bootstrap, topic, jobs, "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z")

    consumers[0].wait_for(lambda: len(read_lines(ran)) >= 60, 60, "60 runs")
    time.sleep(1)  # anything beyond 60 would be a duplicate; give it a moment to show
    ids = read_lines(ran)
    assert len(ids) == 60
    assert len(set(ids)) == 60, "a run executed twice"
    per_consumer = [len(c.messages("run succeeded")) for c in consumers]
    assert sum(per_consumer) == 60
    assert all(n > 0 for n in per_consumer), f"a consumer did no work: {per_consumer}"
    scheduled = {r["scheduled_for"] for c in consumers for r in c.messages("run started")}
    assert len(scheduled) == 60, "each run keeps its true scheduled_for"
    assert min(scheduled) == "2026-01-01T00:00:00.000Z"
    assert max(scheduled) == "2026-01-01T00:59:00.000Z"


def test_job_output_lines_are_logged_with_job_and_run_id(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    jobs = tmp_path / "jobs.cron"
    jobs.write_text("""name=greet * * * * * printf '%s|' "a b" c\n""")
    consumer = start(procs, tmp_path, broker, topic, group)
    backfill(broker.bootstrap, topic, jobs, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z")
    consumer.wait_for(lambda: consumer.messages("run succeeded"), 30, "the run")
    done = consumer.messages("run succeeded")[0]
    output = [r for r in consumer.records() if r["logger"] == "kcron.job"]
    assert [r["msg"] for r in output] == ["a b|c|"]
    assert output[0]["job"] == "greet"
    assert output[0]["run"] == done["run"]
    assert done["exit_code"] == 0
    assert "lateness_ms" in done and "duration_ms" in done


def test_bad_message_is_skipped_and_the_next_run_still_executes(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    jobs = tmp_path / "jobs.cron"
    jobs.write_text("name=after-garbage * * * * * echo still alive\n")
    # One partition, so the garbage is strictly before the good run.
    backfill(
        broker.bootstrap, topic, jobs, "2026-01-01T00:00:30Z", "2026-01-01T00:00:31Z", partitions=1
    )  # a window with no run: only creates the topic
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for garbage in (b"not json at all", b'{"v": 1, "id": "x"}', b"\xff\xfe", b"[" * 50000):
        producer.produce(topic, key=str(uuid.uuid4()), value=garbage)
    producer.produce(topic, key=str(uuid.uuid4()), value=None)
    assert producer.flush(10) == 0
    del producer
    backfill(
        broker.bootstrap, topic, jobs, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", partitions=1
    )

    consumer = start(procs, tmp_path, broker, topic, group, KCRON_PARTITIONS="1")
    consumer.wait_for(lambda: consumer.messages("run succeeded"), 30, "the good run")
    skipped = consumer.messages("undecodable message skipped")
    assert [r["offset"] for r in skipped] == [0, 1, 2, 3, 4]
    assert all(r["partition"] == 0 and r["reason"] for r in skipped)
    assert "not json at all" in skipped[0]["excerpt"]
    assert consumer.proc.poll() is None, "the worker must stay up"
    assert consumer.stop() == 0


def test_sigterm_lets_the_running_job_finish_and_it_never_runs_again(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    ran = tmp_path / "ran.txt"
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(f"name=slow * * * * * sh -c 'sleep 3; echo $KCRON_RUN_ID >> {ran}'\n")
    marker = tmp_path / "marker.cron"
    marker.write_text(f"name=marker * * * * * sh -c 'echo marker-$KCRON_RUN_ID >> {ran}'\n")
    backfill(
        broker.bootstrap, topic, jobs, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", partitions=1
    )
    first = start(procs, tmp_path, broker, topic, group, KCRON_PARTITIONS="1", KCRON_GRACE="20")
    first.wait_for(lambda: first.messages("run started"), 30, "the slow run to start")
    first.signal(signal.SIGTERM)
    assert first.proc.wait(30) == 0, first.text()[-2000:]
    assert len(read_lines(ran)) == 1, "the running job finished within the grace"
    assert first.messages("run succeeded")

    # The marker lands after the slow run on the only partition: if the slow
    # run's offset had not been committed, the new worker would run it first.
    backfill(
        broker.bootstrap,
        topic,
        marker,
        "2026-01-01T00:30:00Z",
        "2026-01-01T00:31:00Z",
        partitions=1,
    )
    second = start(procs, tmp_path, broker, topic, group, KCRON_PARTITIONS="1")
    second.wait_for(lambda: any(x.startswith("marker-") for x in read_lines(ran)), 30, "the marker")
    lines = read_lines(ran)
    assert len(lines) == 2, lines
    assert [r["job"] for r in second.messages("run started")] == ["marker"]


def test_producer_refuses_a_bad_job_file_and_lists_every_error(tmp_path: Path) -> None:
    jobs = tmp_path / "bad.cron"
    jobs.write_text("* * * * * echo ok\n61 * * * * echo\n* * * * *\nfoo=1 @daily x\n")
    result = subprocess.run(
        [sys.executable, "-m", "kcron", "produce", "--jobs", str(jobs)],
        env=kcron_env("127.0.0.1:1", "unused"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 65
    for line in (2, 3, 4):
        assert f"{jobs}:{line}:" in result.stderr


@pytest.mark.slow
def test_produce_runs_an_every_minute_job_at_the_minute(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    ran = tmp_path / "ran.txt"
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(
        f"name=every-minute * * * * * sh -c 'echo $(date +%s.%N) $KCRON_SCHEDULED_FOR >> {ran}'\n"
    )
    consumer = start(procs, tmp_path, broker, topic, group)
    producer = start(
        procs, tmp_path, broker, topic, group, "produce", "--jobs", str(jobs), name="produce"
    )
    wait_until_group_stable([consumer], 2)
    ready = time.time()

    def first_run_after_ready() -> tuple[float, str] | None:
        for line in ran.read_text().splitlines() if ran.exists() else []:
            started_s, scheduled_for = line.split()
            due = datetime.strptime(scheduled_for, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            # A tick that fell while the group was still forming is legitimately late.
            if due.timestamp() > ready:
                return float(started_s) - due.timestamp(), scheduled_for
        return None

    lateness, scheduled_for = consumer.wait_for(first_run_after_ready, 75, "the next minute's run")
    assert scheduled_for.endswith(":00.000Z")
    print(f"every-minute job started {lateness * 1000:.0f} ms after {scheduled_for}")
    assert 0 <= lateness < 2.0
    dispatched = producer.wait_for(lambda: producer.messages("run dispatched"), 5, "dispatch log")
    sent = next(r for r in dispatched if r["scheduled_for"] == scheduled_for)
    # Sent ahead (default 1 s), yet started no earlier than due: the worker held it.
    assert sent["ts"] < scheduled_for
    assert producer.stop() == 0
    assert producer.messages("producer stopped")


def test_producer_reload_keeps_last_good_jobs_on_a_bad_file(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    jobs = tmp_path / "jobs.cron"
    jobs.write_text("name=yearly @yearly echo once a year\n")
    producer = start(
        procs, tmp_path, broker, topic, group, "produce", "--jobs", str(jobs), name="produce"
    )
    producer.wait_for(lambda: producer.messages("became the active producer"), 30, "start")
    jobs.write_text("name=yearly @yearly echo once a year\n* * * * * * six fields\n")
    producer.wait_for(
        lambda: producer.messages("reload failed; keeping the last good job set"),
        15,
        "the failed reload",
    )
    assert any(":2:" in r["msg"] for r in producer.records() if r["level"] == "ERROR")
    jobs.write_text("name=yearly @yearly echo once a year\nname=daily @daily echo daily\n")
    reloaded = producer.wait_for(lambda: producer.messages("job file reloaded"), 15, "the reload")
    assert reloaded[-1]["jobs"] == 2 and reloaded[-1]["added"] == 1
    producer.signal(signal.SIGHUP)
    producer.wait_for(lambda: len(producer.messages("job file reloaded")) >= 2, 15, "SIGHUP reload")
    assert producer.messages("job file reloaded")[-1]["reason"] == "SIGHUP"
    assert producer.stop() == 0


def test_concurrency_runs_jobs_side_by_side_in_one_worker(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    jobs = tmp_path / "jobs.cron"
    jobs.write_text("name=nap * * * * * sleep 1.5\n")
    worker = start(
        procs, tmp_path, broker, topic, group, KCRON_CONCURRENCY="3", KCRON_PARTITIONS="1"
    )
    backfill(broker.bootstrap, topic, jobs, "2026-01-01T00:00Z", "2026-01-01T00:03Z", partitions=1)
    worker.wait_for(lambda: len(worker.messages("run succeeded")) == 3, 30, "three runs")
    stamps = sorted(
        datetime.strptime(r["ts"], "%Y-%m-%dT%H:%M:%S.%fZ") for r in worker.messages("run started")
    )
    # One at a time would take 4.5 s; side by side they all start within a moment.
    assert (stamps[-1] - stamps[0]).total_seconds() < 1.0


@pytest.mark.slow
def test_a_job_longer_than_max_poll_interval_does_not_leave_the_group(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    ran = tmp_path / "ran.txt"
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(f"name=long * * * * * sh -c 'sleep 9; echo $KCRON_RUN_ID >> {ran}'\n")
    worker = start(
        procs, tmp_path, broker, topic, group,
        "consume", "-X", "max.poll.interval.ms=6000", KCRON_PARTITIONS="1",
    )  # fmt: skip
    backfill(broker.bootstrap, topic, jobs, "2026-01-01T00:00Z", "2026-01-01T00:01Z", partitions=1)
    worker.wait_for(lambda: worker.messages("run succeeded"), 40, "the long run")
    assert worker.messages("partitions revoked") == []
    assert worker.messages("partitions lost; their unfinished runs will be redelivered") == []
    assert len(read_lines(ran)) == 1


def test_reboot_jobs_run_once_at_producer_start_and_topic_mismatch_only_warns(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    jobs = tmp_path / "jobs.cron"
    jobs.write_text("name=boot @reboot echo booted\nname=never @yearly echo yearly\n")
    # The topic exists with 1 partition; the producer is configured for 3.
    backfill(broker.bootstrap, topic, jobs, "2026-06-01T00:00Z", "2026-06-01T00:01Z", partitions=1)
    producer = start(
        procs, tmp_path, broker, topic, group, "produce", "--jobs", str(jobs), "--partitions", "3",
        name="produce",
    )  # fmt: skip
    dispatched = producer.wait_for(lambda: producer.messages("run dispatched"), 30, "@reboot run")
    assert [r["job"] for r in dispatched] == ["boot"]
    warning = producer.messages(
        "topic has a different partition count than configured; using it as it is"
    )
    assert warning and warning[0]["partitions"] == 1 and warning[0]["configured"] == 3
    time.sleep(1)
    assert len(producer.messages("run dispatched")) == 1, "@reboot must not repeat"
    assert producer.stop() == 0


def test_worker_metrics_count_runs_by_outcome(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    from urllib.request import urlopen

    from kcron.broker import free_port

    jobs = tmp_path / "jobs.cron"
    jobs.write_text("name=ok * * * * * true\nname=bad * * * * * false\n")
    port = free_port()
    worker = start(procs, tmp_path, broker, topic, group, KCRON_METRICS_PORT=str(port))
    backfill(broker.bootstrap, topic, jobs, "2026-01-01T00:00Z", "2026-01-01T00:02Z")
    worker.wait_for(
        lambda: len(worker.messages("run succeeded")) + len(worker.messages("run failed")) == 4,
        30, "four runs",
    )  # fmt: skip
    body = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert f'kcron_runs_total{{kcron_job="ok",outcome="succeeded",queue="{topic}"}} 2.0' in body
    assert f'kcron_runs_total{{kcron_job="bad",outcome="failed",queue="{topic}"}} 2.0' in body
    assert f'kcron_run_lateness_seconds_count{{queue="{topic}"}} 4.0' in body
