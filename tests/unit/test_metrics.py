"""The metrics as a scrape shows them (docs/monitoring.md): worker, producer, queue lag."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kcron import jobfile
from kcron.cli import cli
from kcron.executor import Outcome
from kcron.jobtimes import JobTimes, schedule_key
from kcron.lag import QueueReader, lag
from kcron.metrics import ProducerMetrics, WorkerMetrics
from kcron.producer import ProducerService
from kcron.settings import Settings, group_for
from tests.unit.fake_worker_kafka import T0, TOPIC, Harness, Plan, a_run
from tests.unit.producer_fakes import FakeElector, FakeHost, FakeKafka

P0 = (TOPIC, 0)
NOW = datetime(2028, 1, 3, 10, 0, 30, tzinfo=UTC)  # a Monday


def scrape(registry: Any) -> str:
    return generate_latest(registry).decode()


# -- worker, through the fake Kafka --------------------------------------------


def test_a_failing_run_shows_in_the_scrape_with_its_job_queue_and_outcome() -> None:
    h = Harness({"x": Plan(seconds=2, outcome=Outcome.FAILED, exit_code=1)})
    h.kafka.add(P0, a_run("x", max_attempts=1).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(4, h.signal)

    assert h.run() == 0

    text = scrape(h.worker.metrics.registry)
    assert 'kcron_runs_total{kcron_job="x",outcome="failed",queue="jobs"} 1.0' in text
    # born at 0 when the job was first seen: increase() sees the first failure
    assert 'kcron_runs_total{kcron_job="x",outcome="succeeded",queue="jobs"} 0.0' in text
    assert 'kcron_run_duration_seconds_count{kcron_job="x",queue="jobs"} 1.0' in text
    assert 'kcron_dead_letters_total{kcron_job="x",kind="exhausted",queue="jobs"} 1.0' in text
    assert h.counter("kcron_job_last_success_timestamp_seconds", kcron_job="x", queue=TOPIC) == 0


def test_a_success_sets_the_jobs_last_success_time_and_lateness_is_by_queue() -> None:
    h = Harness({"ok": Plan(seconds=3)})
    h.kafka.add(P0, a_run("ok").encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(5, h.signal)

    assert h.run() == 0

    succeeded_at = h.counter(
        "kcron_job_last_success_timestamp_seconds", kcron_job="ok", queue=TOPIC
    )
    assert succeeded_at == pytest.approx(T0.timestamp() + 3, abs=0.1)  # the run took 3 s
    assert h.counter("kcron_runs_total", kcron_job="ok", queue=TOPIC, outcome="succeeded") == 1
    assert h.counter("kcron_run_lateness_seconds_count", queue=TOPIC) == 1
    assert h.counter("kcron_worker_slots", queue=TOPIC) == 4


def test_waiting_running_and_partitions_are_what_the_worker_holds_now() -> None:
    h = Harness({"slow": Plan(seconds=None)}, concurrency=1)
    for n in range(3):
        h.kafka.add(P0, a_run("slow", n=n).encode())
    seen: dict[str, float] = {}

    def look() -> None:
        for name in ("kcron_runs_waiting", "kcron_worker_partitions"):
            seen[name] = h.counter(name, queue=TOPIC)
        h.signal()
        h.signal()  # a second one: stop at once, the fake jobs never end

    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(2, look)
    h.run()

    # one slot: one run executes, two are taken and wait for it
    assert seen == {"kcron_runs_waiting": 2, "kcron_worker_partitions": 1}


def test_every_refusal_reason_and_undecodable_start_at_zero() -> None:
    text = scrape(WorkerMetrics("jobs").registry)
    for reason in (
        "unsigned",
        "bad_signature",
        "unknown_key",
        "wrong_queue",
        "stale",
        "not_allowed",
    ):
        assert f'kcron_runs_rejected_total{{queue="jobs",reason="{reason}"}} 0.0' in text
    assert 'kcron_undecodable_messages_total{queue="jobs"} 0.0' in text
    assert 'kcron_info{queue="jobs",role="worker",version=' in text


def test_job_names_past_the_cap_count_as_other_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = WorkerMetrics("jobs", max_jobs=2)
    with caplog.at_level(logging.WARNING, logger="kcron.metrics"):
        for name in ("a", "b", "c", "d", "a"):
            metrics.finished(name, "failed", 1.0, None)
    sample = metrics.registry.get_sample_value
    assert sample("kcron_runs_total", {"kcron_job": "a", "queue": "jobs", "outcome": "failed"}) == 2
    other = {"kcron_job": "_other", "queue": "jobs", "outcome": "failed"}
    assert sample("kcron_runs_total", other) == 2
    assert sample("kcron_runs_total", {**other, "kcron_job": "c"}) is None
    assert [r.getMessage() for r in caplog.records] == [
        "too many distinct job names for metric labels; counting the rest as _other"
    ]


# -- producer ------------------------------------------------------------------

FILE = """\
name=weekday 0 9 * * 1-5 echo w
name=minute queue=cluster-a * * * * * echo m
name=boot @reboot echo b
"""


def load(tmp_path: Path, text: str) -> tuple[jobfile.Job, ...]:
    path = tmp_path / "jobs.cron"
    path.write_text(text)
    return jobfile.load(path).jobs


def test_every_job_of_the_file_starts_at_zero_with_its_queue(tmp_path: Path) -> None:
    clock = [1000.0]
    metrics = ProducerMetrics("kcron.jobs", clock=lambda: clock[0])
    metrics.load(load(tmp_path, FILE), "kcron.jobs")
    text = scrape(metrics.registry)
    for job, queue in (("weekday", "kcron.jobs"), ("minute", "cluster-a"), ("boot", "kcron.jobs")):
        labels = f'{{kcron_job="{job}",queue="{queue}"}}'
        assert f"kcron_runs_dispatched_total{labels} 0.0" in text
        assert f"kcron_delivery_failures_total{labels} 0.0" in text
        assert f"kcron_job_loaded_timestamp_seconds{labels} 1000.0" in text
    assert "kcron_producer_active 0.0" in text

    # A reload keeps counts and first-load times, adds new jobs at 0, drops removed ones.
    metrics.dispatched("minute", "cluster-a", 3)
    clock[0] = 2000.0
    metrics.load(
        load(tmp_path, FILE.replace("name=boot @reboot", "name=new @hourly")), "kcron.jobs"
    )
    sample = metrics.registry.get_sample_value
    minute = {"kcron_job": "minute", "queue": "cluster-a"}
    assert sample("kcron_runs_dispatched_total", minute) == 3
    assert sample("kcron_job_loaded_timestamp_seconds", minute) == 1000
    new = {"kcron_job": "new", "queue": "kcron.jobs"}
    assert sample("kcron_job_loaded_timestamp_seconds", new) == 2000
    assert sample("kcron_delivery_failures_total", new) == 0
    assert (
        sample("kcron_runs_dispatched_total", {"kcron_job": "boot", "queue": "kcron.jobs"}) is None
    )


def test_interval_is_the_longest_gap_and_next_run_follows_the_clock(tmp_path: Path) -> None:
    clock = [NOW.timestamp()]
    metrics = ProducerMetrics("kcron.jobs", clock=lambda: clock[0])
    jobs = load(tmp_path, FILE)
    metrics.load(jobs, "kcron.jobs")
    sample = metrics.registry.get_sample_value
    weekday = {"kcron_job": "weekday", "queue": "kcron.jobs"}
    assert sample("kcron_job_interval_seconds", weekday) is None  # not computed yet
    metrics.compute_times(jobs, NOW, UTC)

    assert sample("kcron_job_interval_seconds", weekday) == 3 * 86400  # Friday to Monday
    minute = {"kcron_job": "minute", "queue": "cluster-a"}
    assert sample("kcron_job_interval_seconds", minute) == 60
    assert sample("kcron_job_next_run_timestamp_seconds", minute) == NOW.timestamp() + 30
    clock[0] += 3 * 3600  # long past the 64 runs computed at load
    assert sample("kcron_job_next_run_timestamp_seconds", minute) == clock[0] + 30
    assert (
        sample("kcron_job_next_run_timestamp_seconds", weekday)
        == datetime(2028, 1, 4, 9, 0, tzinfo=UTC).timestamp()
    )
    boot = {"kcron_job": "boot", "queue": "kcron.jobs"}
    assert sample("kcron_job_interval_seconds", boot) is None  # @reboot: no interval
    assert sample("kcron_job_next_run_timestamp_seconds", boot) is None


def test_job_times_are_computed_once_per_distinct_schedule(tmp_path: Path) -> None:
    text = "".join(f"name=j{n} */5 * * * * echo {n}\n" for n in range(50)) + FILE
    jobs = load(tmp_path, text)
    times = JobTimes(jobs, NOW)
    assert len(times) == 3  # */5, the weekday one, the minute one; @reboot has none
    assert times.interval_s(schedule_key(jobs[0])) == 300


def test_producer_active_follows_the_role(tmp_path: Path) -> None:
    path = tmp_path / "jobs.cron"
    path.write_text(FILE)
    elector = FakeElector({})
    kafka = FakeKafka(elector)
    service = ProducerService(Settings(), str(path), kafka, FakeHost(NOW))
    seen: list[float | None] = []

    def active() -> None:
        assert kafka.metrics is not None
        seen.append(kafka.metrics.registry.get_sample_value("kcron_producer_active"))

    elector.script = {1: "assign", 8: active, 9: "revoke", 12: active, 13: service.request_stop}
    assert service.run() == 0
    assert seen == [1.0, 0.0]
    assert kafka.metrics is not None
    assert (
        kafka.metrics.registry.get_sample_value(
            "kcron_delivery_failures_total", {"kcron_job": "minute", "queue": "cluster-a"}
        )
        == 0
    )


# -- queue lag -----------------------------------------------------------------


def test_lag_counts_from_the_commit_or_from_the_low_watermark() -> None:
    marks = {0: (0, 10), 1: (5, 8), 2: (100, 100)}
    assert lag(marks, {0: 7, 1: 8}) == 3 + 0 + 0
    assert lag(marks, {}) == 10 + 3 + 0  # nothing committed: everything retained
    assert lag(marks, {0: -1001, 1: 2}) == 10 + 3  # invalid, or below a deleted segment


class FakeGroups:
    def __init__(self, members: int | Exception, committed: Mapping[int, int]) -> None:
        self._members = members
        self._committed = committed
        self.asked: list[str] = []

    def members(self, group: str) -> int:
        self.asked.append(group)
        if isinstance(self._members, Exception):
            raise self._members
        return self._members

    def committed(self, group: str, topic: str) -> Mapping[int, int]:
        return self._committed

    def watermarks(self, topic: str) -> Mapping[int, tuple[int, int]]:
        return {0: (0, 4), 1: (0, 6)}


def test_a_queue_reader_reads_each_queues_own_group() -> None:
    groups = FakeGroups(2, {0: 4, 1: 1})
    assert QueueReader(groups).read("kcron.jobs") == (2, 5)
    assert QueueReader(groups).read("cluster-a") == (2, 5)
    assert groups.asked == ["kcron", "kcron-cluster-a"]
    assert group_for("cluster-a") == Settings(topic="cluster-a").consumer_group
    assert (
        group_for("cluster-a", "mine") == Settings(topic="cluster-a", group="mine").consumer_group
    )


def test_a_question_the_broker_cannot_answer_leaves_its_metric_out_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = QueueReader(FakeGroups(RuntimeError("UNSUPPORTED_VERSION"), {}))
    metrics = ProducerMetrics("kcron.jobs")
    with caplog.at_level(logging.DEBUG, logger="kcron.metrics"):
        for _ in range(3):
            metrics.queue_seen("kcron.jobs", *reader.read("kcron.jobs"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "describe consumer groups" in warnings[0].getMessage()
    sample = metrics.registry.get_sample_value
    assert sample("kcron_queue_consumers", {"queue": "kcron.jobs"}) is None
    assert sample("kcron_queue_lag_messages", {"queue": "kcron.jobs"}) == 10


# -- the command line ----------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "env", "served"),
    [
        (["--metrics-port", "9400"], {}, 9400),
        (["--metrics-port", "9401+3"], {}, 9404),
        ([], {"KCRON_METRICS_PORT": "9501+0"}, 9501),
        ([], {}, None),  # no port: no metrics, as before
        (["--metrics-port", "9401+3"], {"KCRON_METRICS": "false"}, None),
    ],
)
def test_the_metrics_port_is_a_port_or_base_plus_n(
    monkeypatch: pytest.MonkeyPatch, given: list[str], env: dict[str, str], served: int | None
) -> None:
    got: list[Settings] = []

    class Worker:
        def __init__(self, settings: Settings, **_: object) -> None:
            got.append(settings)

        def run(self) -> int:
            return 0

    monkeypatch.setattr("kcron.worker.Worker", Worker)
    result = CliRunner().invoke(cli, ["consume", "--allow-root-jobs", *given], env=env)
    assert result.exit_code == 0, result.output
    assert got[0].served_metrics_port == served


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("94o1", "'94o1' is not a port number or BASE+N (e.g. 9401+3)"),
        ("9401+", "'9401+' is not a port number or BASE+N"),
        ("9401+x", "'9401+x' is not a port number or BASE+N"),
        ("70000", "'70000' gives port 70000, outside 1-65535"),
    ],
)
def test_a_bad_metrics_port_is_a_clear_usage_error(bad: str, says: str) -> None:
    result = CliRunner().invoke(cli, ["consume", "--metrics-port", bad])
    assert result.exit_code == 2
    assert "--metrics-port" in result.stderr and says in result.stderr


def samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_served_job_series_are_the_registrys_written_faster(tmp_path: Path) -> None:
    clock = [NOW.timestamp()]
    metrics = ProducerMetrics("kcron.jobs", clock=lambda: clock[0])
    jobs = load(tmp_path, FILE)
    metrics.load(jobs, "kcron.jobs")
    metrics.compute_times(jobs, NOW, UTC)
    metrics.dispatched("minute", "cluster-a", 2)
    metrics.delivery_failed("gone", "kcron.jobs")  # a job no longer in the file still counts

    served = samples(metrics._jobs.text())
    everything = samples(scrape(metrics.registry))
    assert served and served <= everything
    assert {s for s in everything if s[0].startswith(("kcron_job_", "kcron_runs_dispatched",
            "kcron_delivery_failures"))} == served  # fmt: skip
    assert (
        "kcron_delivery_failures_total",
        (("kcron_job", "gone"), ("queue", "kcron.jobs")),
        1.0,
    ) in served


# -- the probe -----------------------------------------------------------------


class FakeAdmin(FakeGroups):
    def __init__(self) -> None:
        super().__init__(1, {0: 4, 1: 6})
        self.up = True

    def answers(self, topic: str) -> bool:
        return self.up


def test_the_probe_sets_broker_up_and_reads_the_queues_only_while_it_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kcron.probe import Probe

    admin = FakeAdmin()
    metrics = ProducerMetrics("kcron.jobs")
    probe = Probe(Settings(), metrics, lambda: ["kcron.jobs", "cluster-a"], admin)
    sample = metrics.registry.get_sample_value
    with caplog.at_level(logging.INFO, logger="kcron.metrics"):
        probe.once()
        assert sample("kcron_broker_up") == 1
        seen = sample("kcron_broker_last_seen_timestamp_seconds")
        assert seen is not None and seen > 0
        assert sample("kcron_queue_consumers", {"queue": "cluster-a"}) == 1
        assert sample("kcron_queue_lag_messages", {"queue": "cluster-a"}) == 0
        assert admin.asked == ["kcron-cluster-a", "kcron"]

        admin.up = False
        probe.once()
        assert sample("kcron_broker_up") == 0
        assert sample("kcron_broker_last_seen_timestamp_seconds") == seen
        assert admin.asked == ["kcron-cluster-a", "kcron"], "no group questions while down"
    assert [r.getMessage() for r in caplog.records] == [
        "broker answers the probe",
        "broker did not answer the probe",
    ]


def test_the_probe_thread_stops_on_shutdown() -> None:
    from kcron.probe import Probe

    probe = Probe(Settings(broker_probe_interval_s=60), WorkerMetrics(), None, FakeAdmin())
    probe.start()
    probe.stop()
    assert not probe._thread.is_alive()


def test_a_reload_supersedes_a_computation_still_running(tmp_path: Path) -> None:
    jobs = load(tmp_path, FILE)
    metrics = ProducerMetrics("kcron.jobs", clock=lambda: NOW.timestamp())
    metrics.load(jobs, "kcron.jobs")
    hold = threading.Event()
    first = metrics.compute_times_in_background(jobs, lambda: NOW, UTC, hold)
    metrics.load(jobs, "kcron.jobs")  # reloaded before the first computation began
    second = metrics.compute_times_in_background(jobs, lambda: NOW, UTC, hold)
    hold.set()
    first.join(5)
    second.join(5)
    assert not first.is_alive() and not second.is_alive()
    minute = {"kcron_job": "minute", "queue": "cluster-a"}
    assert metrics.registry.get_sample_value("kcron_job_interval_seconds", minute) == 60
