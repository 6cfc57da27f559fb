"""Queues without a broker: which names a queue may have, the limit per job file,
the message's queue, routing in the dispatchers and the producer, the workers'
consumer group per queue, and where dlq requeue sends a dead run."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kcron import deadletter, jobfile, kafka, retry
from kcron.cli import cli
from kcron.dispatch import Dispatcher, TransactionalDispatcher
from kcron.errors import BrokerError, ConfigError, DecodeError, ExitCode, JobFileError
from kcron.executor import ExecResult, Outcome
from kcron.message import RunMessage, decode
from kcron.metrics import ProducerMetrics as Metrics
from kcron.metrics import WorkerMetrics
from kcron.producer import ProducerService
from kcron.retry import DeadKind, DeadLetter, Source
from kcron.schedule import Run
from kcron.settings import Settings
from kcron.worker.runner import Job, JobRunner
from tests.unit.fake_worker_kafka import TOPIC, Harness, Plan, a_run
from tests.unit.producer_fakes import (
    FakeElector,
    FakeHost,
    FakeKafka,
    FakeTxnProducer,
    PlainRecorder,
)

FILE = "jobs.cron"
T0 = datetime(2028, 1, 1, 10, 0, tzinfo=UTC)
RUN_ID = "0f8e2b5c-3a41-4c6e-9b7d-2a1f5e8c9d00"


def parse(text: str, **kwargs: Any) -> list[jobfile.Job]:
    return list(jobfile.parse(text, FILE, **kwargs).jobs)


def errors_of(text: str, **kwargs: Any) -> list[str]:
    with pytest.raises(JobFileError) as info:
        jobfile.parse(text, FILE, **kwargs)
    return [str(e) for e in info.value.errors]


# -- job file: names and limit --------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["cluster-a", "kcron.slow", "Q_1-x", "a", "q" * 242, "retry", "x.retry2", "dlq.x", "_x"],
)
def test_a_legal_topic_name_with_room_for_its_derived_topics_is_a_queue(name: str) -> None:
    (job,) = parse(f"queue={name} * * * * * echo hi\n")
    assert job.queue == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "not a valid Kafka topic name"),
        (".", "not a valid Kafka topic name"),
        ("..", "not a valid Kafka topic name"),
        ("a/b", "not a valid Kafka topic name"),
        ("clüster", "not a valid Kafka topic name"),
        ("q" * 250, "not a valid Kafka topic name"),
        ("q" * 243, "too long for a queue (243 characters): at most 242"),
        ("x.retry", "must not end in '.retry': that names the retry topic of queue 'x'"),
        ("x.dlq", "must not end in '.dlq': that names the dead-letter topic of queue 'x'"),
        ("kcron.jobs.state", "that names the dispatch-state topic of queue 'kcron.jobs'"),
        (".retry", "must not end in '.retry'"),
        ("__consumer_offsets", "Kafka's internal topics"),
    ],
    ids=lambda v: v[:20] if isinstance(v, str) else None,
)
def test_a_bad_queue_name_is_a_file_line_error_saying_why(name: str, reason: str) -> None:
    text = f"name=ok * * * * * echo ok\nqueue={name} * * * * * echo hi\n"
    (error,) = errors_of(text)
    assert error.startswith(f"{FILE}:2: option queue={name}: ")
    assert reason in error


def test_a_file_over_the_queue_limit_is_an_error_at_the_first_queue_over_it() -> None:
    text = (
        "queue=a * * * * * echo 1\n"
        "* * * * * echo default\n"
        "queue=b * * * * * echo 2\n"
        "queue=a * * * * * echo 3\n"  # not a new queue
        "queue=c * * * * * echo 4\n"  # the third: over a limit of 2
        "queue=d * * * * * echo 5\n"
    )
    (error,) = errors_of(text, max_queues=2)
    assert error == (
        f"{FILE}:5: queue 'c' makes 3 distinct queues, over the limit of 2 "
        "(raise it with --max-queues or KCRON_MAX_QUEUES)"
    )
    assert len(parse(text, max_queues=4)) == 6
    assert len(parse(text)) == 6, "no limit unless one is given"


def test_the_queue_limit_is_read_from_the_settings_by_check(tmp_path: Path) -> None:
    path = tmp_path / "jobs.cron"
    path.write_text("".join(f"queue=q{i} * * * * * echo {i}\n" for i in range(51)))
    runner = CliRunner()
    over = runner.invoke(cli, ["check", str(path)])
    assert over.exit_code == ExitCode.DATAERR
    assert f"{path}:51: queue 'q50' makes 51 distinct queues, over the limit of 50" in over.stderr
    raised = runner.invoke(cli, ["check", str(path)], env={"KCRON_MAX_QUEUES": "51"})
    assert raised.exit_code == 0, raised.output
    flag = runner.invoke(cli, ["check", "--max-queues", "60", str(path)])
    assert flag.exit_code == 0, flag.output


def test_jobs_per_queue_list_the_default_topic_first_then_in_file_order() -> None:
    jobs = parse(
        "queue=cluster-b * * * * * echo 1\n"
        "* * * * * echo 2\n"
        "queue=cluster-a * * * * * echo 3\n"
        "queue=kcron.jobs * * * * * echo 4\n"  # the default topic, named
        "queue=cluster-b * * * * * echo 5\n"
    )
    counts = jobfile.queues(jobs, "kcron.jobs")
    assert list(counts.items()) == [("kcron.jobs", 2), ("cluster-b", 2), ("cluster-a", 1)]
    only_named = parse("queue=a * * * * * echo 1\n")
    assert jobfile.queues(only_named, "kcron.jobs") == {"a": 1}


def test_check_shows_each_jobs_queue_and_the_queues_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "jobs.cron"
    path.write_text(
        "name=one * * * * * echo 1\nname=two * * * * * echo 2\nname=three @hourly echo 3\n"
        "name=gpu queue=cluster-a @daily echo 4\n"
    )
    text = CliRunner().invoke(cli, ["check", str(path)])
    assert text.exit_code == 0, text.output
    assert "  options:  queue=cluster-a" in text.stdout
    assert "queues: kcron.jobs (3 jobs), cluster-a (1 job)" in text.stdout
    as_json = CliRunner().invoke(cli, ["check", "--format", "json", str(path)], env={})
    doc = json.loads(as_json.stdout)
    assert [j["options"] for j in doc["jobs"]] == [{}, {}, {}, {"queue": "cluster-a"}]
    assert doc["queues"] == [{"name": "kcron.jobs", "jobs": 3}, {"name": "cluster-a", "jobs": 1}]
    other = CliRunner().invoke(cli, ["check", str(path)], env={"KCRON_TOPIC": "prod.jobs"})
    assert "queues: prod.jobs (3 jobs), cluster-a (1 job)" in other.stdout


# -- the message ----------------------------------------------------------------


def a_message(**changes: Any) -> RunMessage:
    values: dict[str, Any] = {
        "id": RUN_ID, "job": "backup", "command": "true", "scheduled_for": T0, "produced_at": T0,
    }  # fmt: skip
    values.update(changes)
    return RunMessage(**values)


def test_the_message_carries_its_queue_and_a_message_without_one_still_decodes() -> None:
    routed = a_message(queue="cluster-a")
    assert json.loads(routed.encode())["queue"] == "cluster-a"
    assert decode(routed.encode()) == routed
    old = a_message()
    assert "queue" not in json.loads(old.encode()), "left out while unset, as before"
    assert decode(old.encode()).queue is None
    with_null = json.loads(old.encode()) | {"queue": None}
    assert decode(json.dumps(with_null).encode()).queue is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [(7, "field 'queue' has type integer"), ("a/b", "is not a Kafka topic name"), ("", "topic")],
)
def test_a_queue_that_is_no_topic_name_makes_the_message_undecodable(
    value: object, reason: str
) -> None:
    doc = json.loads(a_message().encode()) | {"queue": value}
    with pytest.raises(DecodeError) as info:
        decode(json.dumps(doc).encode())
    assert reason in info.value.reason


def test_the_schema_declares_the_optional_queue_and_allows_extra_fields() -> None:
    path = Path(__file__).resolve().parents[2] / "kcron" / "schema" / "run-message.v1.json"
    schema = json.loads(path.read_text())
    assert "queue" in schema["properties"] and "queue" not in schema["required"]
    assert schema.get("additionalProperties", True) is not False  # old workers' leniency


def test_retries_and_requeues_keep_the_queue() -> None:
    run = a_message(queue="cluster-b", max_attempts=2)
    attempt = retry.attempt_of(run, ExecResult(Outcome.FAILED, 1, 0.1, 0, False, b"", ""), T0, T0)
    assert retry.next_attempt(run, attempt, T0, T0).queue == "cluster-b"
    assert retry.requeued(run, T0).queue == "cluster-b"


# -- routing in the dispatchers and the producer ----------------------------------


JOBS = (
    "name=plain * * * * * echo plain\n"
    "name=gpu queue=cluster-a * * * * * echo gpu\n"
    "name=db queue=cluster-b * * * * * echo db\n"
)


def runs_at(when: datetime, text: str = JOBS) -> list[Run]:
    return [Run(when, job) for job in parse(text)]


def test_a_transaction_sends_each_run_to_its_queue_and_the_state_to_the_default_state_topic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    txn = FakeTxnProducer()
    dispatcher = TransactionalDispatcher(
        txn, "kcron.jobs", "jobs", "kcron.jobs.state", Metrics(), lambda s: None
    )
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        dispatcher.dispatch(runs_at(T0), T0, lambda: False)
    (committed,) = txn.committed
    runs = [
        (topic, decode(value)) for topic, _key, value in committed if not topic.endswith("state")
    ]
    assert [(topic, m.job, m.queue) for topic, m in runs] == [
        ("kcron.jobs", "plain", "kcron.jobs"),
        ("cluster-a", "gpu", "cluster-a"),
        ("cluster-b", "db", "cluster-b"),
    ]
    states = sorted(key for topic, key, _value in committed if topic == "kcron.jobs.state")
    assert states == [b"jobs/db", b"jobs/gpu", b"jobs/plain"]
    dispatched = [r.kcron_fields for r in caplog.records if r.msg == "run dispatched"]  # type: ignore[attr-defined]
    assert [(r["job"], r["queue"], r["offset"] is not None) for r in dispatched] == [
        ("plain", "kcron.jobs", True),
        ("gpu", "cluster-a", True),
        ("db", "cluster-b", True),
    ]


def test_backfill_sends_each_run_to_its_queue() -> None:
    recorder = PlainRecorder()
    dispatcher = Dispatcher(recorder, "prod.jobs", Metrics())
    for run in runs_at(T0):
        dispatcher.send(run, T0)
    assert [(t, m.job, m.queue) for t, _k, m in recorder.sent] == [
        ("prod.jobs", "plain", "prod.jobs"),
        ("cluster-a", "gpu", "cluster-a"),
        ("cluster-b", "db", "cluster-b"),
    ]


def test_backfill_creates_every_queue_topic_of_its_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str | None] = []
    monkeypatch.setattr(kafka, "wait_for_broker", lambda settings: None)
    monkeypatch.setattr(
        kafka, "ensure_topic", lambda settings, topic=None, *a, **k: made.append(topic)
    )
    recorder = PlainRecorder()
    monkeypatch.setattr(
        Dispatcher, "connect", classmethod(lambda cls, s, m: cls(recorder, s.topic, m))
    )
    from kcron import dispatch

    count = dispatch.backfill(Settings(), runs_at(T0) + runs_at(T0.replace(minute=1)))
    assert count == 6
    assert made == [None, "cluster-a", "cluster-b"]  # None: the default topic
    assert sorted({t for t, _k, _m in recorder.sent}) == ["cluster-a", "cluster-b", "kcron.jobs"]


class ProducerRig:
    def __init__(self, tmp_path: Path, text: str) -> None:
        self.jobs = tmp_path / "jobs.cron"
        self.jobs.write_text(text)
        self.host = FakeHost(T0.replace(second=30))
        self.elector = FakeElector({1: "assign"})
        self.txn = FakeTxnProducer()
        self.kafka = FakeKafka(self.elector, make_dispatcher=self._dispatcher)
        self.service = ProducerService(Settings(), str(self.jobs), self.kafka, self.host)

    def _dispatcher(self, metrics: Metrics, sleep: Callable[[float], None]) -> Any:
        return TransactionalDispatcher(
            self.txn, "kcron.jobs", "jobs", "kcron.jobs.state", metrics, sleep
        )

    def at_poll(self, poll: int, action: Callable[[], None]) -> None:
        self.elector.script[poll] = action

    def stop_at(self, when: datetime) -> None:
        original = self.elector.poll

        def poll() -> None:
            original()
            if self.host.clock >= when:
                self.service.request_stop()

        self.elector.poll = poll  # type: ignore[method-assign]

    def sent(self) -> list[list[tuple[str, str]]]:
        """Per transaction, (topic, job) of each run."""
        return [
            [(t, decode(v).job) for t, _k, v in txn if not t.endswith(".state")]
            for txn in self.txn.committed
        ]


def test_the_producer_makes_the_queue_topics_at_start_and_routes_reboot_runs(
    tmp_path: Path,
) -> None:
    rig = ProducerRig(tmp_path, JOBS + "name=boot queue=cluster-c @reboot echo boot\n")
    rig.stop_at(T0.replace(minute=1, second=30))
    assert rig.service.run() == 0
    assert rig.kafka.queues_made == [["cluster-a", "cluster-b", "cluster-c"]]
    assert rig.sent() == [
        [("cluster-c", "boot")],
        [("kcron.jobs", "plain"), ("cluster-a", "gpu"), ("cluster-b", "db")],
    ]


def test_misfire_catch_up_runs_go_to_their_queues_too(tmp_path: Path) -> None:
    rig = ProducerRig(tmp_path, JOBS)
    rig.kafka.state = {"gpu": T0.replace(hour=9, minute=58), "plain": T0}  # gpu missed 2 ticks
    rig.stop_at(T0.replace(second=45))
    assert rig.service.run() == 0
    assert rig.sent() == [[("cluster-a", "gpu")]], "the latest missed tick, once, on its queue"


def test_a_reload_makes_a_new_queues_topic_before_its_runs_go_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = ProducerRig(tmp_path, "name=plain * * * * * echo plain\n")

    def add_a_queue() -> None:
        rig.jobs.write_text("name=plain * * * * * echo plain\nname=new queue=fresh @hourly x\n")
        rig.host.on_hup(signal.SIGHUP, None)

    rig.at_poll(5, add_a_queue)
    rig.stop_at(T0.replace(hour=11, second=30))
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert rig.service.run() == 0
    assert rig.kafka.queues_made == [["fresh"]], "made once, not again on every reload"
    eleven = rig.sent()[-1]
    assert eleven == [("kcron.jobs", "plain"), ("fresh", "new")]


def test_a_reload_whose_queue_cannot_be_made_keeps_the_last_good_jobs_and_tries_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = ProducerRig(tmp_path, "name=plain * * * * * echo plain\n")
    rig.kafka.queue_failures.append(BrokerError("cannot create topic fresh: scripted"))

    def add_a_queue() -> None:
        rig.jobs.write_text("name=plain * * * * * echo plain\nname=new queue=fresh * * * * * x\n")
        rig.host.on_hup(signal.SIGHUP, None)

    rig.at_poll(5, add_a_queue)
    rig.stop_at(T0.replace(minute=2, second=30))
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert rig.service.run() == 0
    (failed,) = [r for r in caplog.records if r.msg.startswith("reload failed")]
    assert "cannot create topic fresh" in failed.kcron_fields["error"]  # type: ignore[attr-defined]
    assert rig.kafka.queues_made == [["fresh"]], "tried again at the next look at the file"
    assert rig.sent()[-1] == [("kcron.jobs", "plain"), ("fresh", "new")]


# -- the worker -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "group", "expected"),
    [
        ("kcron.jobs", None, "kcron"),  # existing deployments keep their group and offsets
        ("cluster-a", None, "kcron-cluster-a"),
        ("cluster-a", "", "kcron-cluster-a"),
        ("cluster-a", "mine", "mine"),
        ("kcron.jobs", "mine", "mine"),
    ],
)
def test_each_queue_has_its_own_consumer_group_unless_one_is_given(
    topic: str, group: str | None, expected: str
) -> None:
    settings = Settings(topic=topic, group=group)
    assert settings.consumer_group == expected
    assert kafka.consumer_config(settings)["group.id"] == expected


def test_consume_help_tells_the_group_default() -> None:
    result = CliRunner().invoke(cli, ["consume", "--help"])
    text = " ".join(result.stdout.split()).replace("- ", "-")  # help wraps at hyphens too
    assert "[default: kcron on the topic kcron.jobs, else kcron-TOPIC]" in text


@pytest.mark.parametrize("topic", ["x.retry", "x.dlq", "a/b", "__consumer_offsets"])
def test_a_topic_that_cannot_be_a_queue_is_a_settings_error(topic: str) -> None:
    with pytest.raises(ConfigError, match="topic"):
        Settings(topic=topic)


def test_a_worker_serves_one_queue_with_its_own_retry_and_dead_letter_topics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness({"backup": Plan(seconds=1, outcome=Outcome.FAILED, exit_code=3)})
    h.kafka.add((TOPIC, 0), a_run(attempt=3, max_attempts=3, queue=TOPIC).encode())
    h.kafka.at(0, lambda: h.kafka.assign([(TOPIC, 0)]))
    h.kafka.at(2, h.signal)
    with caplog.at_level(logging.INFO, logger="kcron"):
        assert h.run() == 0
    assert h.kafka.subscribed == [TOPIC, f"{TOPIC}.retry"]
    assert [p.topic for p in h.kafka.produced] == [f"{TOPIC}.dlq"]
    fields = {r.msg: r.kcron_fields for r in caplog.records if hasattr(r, "kcron_fields")}  # type: ignore[attr-defined]
    assert fields["dead letter"]["queue"] == TOPIC
    assert "run belongs to another queue; running it here, where its topic sent it" not in fields


@pytest.mark.parametrize(("queue", "logged"), [(None, TOPIC), (TOPIC, TOPIC), ("other", "other")])
def test_run_started_and_succeeded_say_which_queue_the_run_belongs_to(
    caplog: pytest.LogCaptureFixture, queue: str | None, logged: str
) -> None:
    runner = JobRunner(1024, TOPIC, WorkerMetrics(), lambda: T0)
    job = Job(a_run("real", command="true", max_attempts=1, queue=queue), (TOPIC, 0), 0, 1)
    with caplog.at_level(logging.INFO, logger="kcron"):
        done = runner.execute(job, threading.Event(), lambda pid: None)
    assert done.result is not None and done.result.ok
    said = {r.msg: r.kcron_fields for r in caplog.records if hasattr(r, "kcron_fields")}  # type: ignore[attr-defined]
    assert said["run started"]["queue"] == said["run succeeded"]["queue"] == logged


def test_a_run_of_another_queue_is_run_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness({"backup": Plan(seconds=1)})
    h.kafka.add((TOPIC, 0), a_run(queue="cluster-a").encode())
    h.kafka.at(0, lambda: h.kafka.assign([(TOPIC, 0)]))
    h.kafka.at(2, h.signal)
    with caplog.at_level(logging.INFO, logger="kcron"):
        assert h.run() == 0
    assert h.started_ids() == ["backup-0"]
    (warned,) = [
        r.kcron_fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.msg == "run belongs to another queue; running it here, where its topic sent it"
    ]
    assert (warned["queue"], warned["topic"]) == ("cluster-a", TOPIC)
    assert h.kafka.committed == {(TOPIC, 0): 1}


# -- dead letters -------------------------------------------------------------------


def dead(
    run_queue: str | None, held_in: str, run_id: str = RUN_ID, dead_at: datetime = T0
) -> DeadLetter:
    run = a_message(id=run_id, queue=run_queue, max_attempts=1)
    result = ExecResult(Outcome.FAILED, 1, 0.1, 0, False, b"", "exit code 1")
    record = retry.dead_letter(
        kind=DeadKind.EXHAUSTED, reason="attempts exhausted (1 of 1), last: exit code 1",
        dead_at=dead_at, source=Source(held_in, 0, 0), run=run, result=result,
        attempt=retry.attempt_of(run, result, dead_at, dead_at),
    )  # fmt: skip
    return retry.read_dead_letter(retry.encode_dead_letter(record), Source(f"{held_in}.dlq", 0, 4))


class DlqRig:
    """deadletter with its Kafka calls replaced: letters per queue, sends recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, letters: dict[str, list[DeadLetter]]):
        self.read: list[list[str]] = []
        self.sent: list[tuple[str, RunMessage]] = []
        self.topics = {"kcron.jobs", "cluster-a", "cluster-b"}

        def read_dead_letters(
            settings: Settings, idle_s: float, queues: Any = None
        ) -> list[DeadLetter]:
            wanted = list(queues or [settings.topic])
            self.read.append(wanted)
            found = [x for q in wanted for x in letters.get(q, [])]
            return sorted(found, key=lambda x: x.dead_at) if len(wanted) > 1 else found

        monkeypatch.setattr(deadletter, "read_dead_letters", read_dead_letters)
        monkeypatch.setattr(
            kafka, "topic_partitions", lambda settings, topic: 2 if topic in self.topics else None
        )
        monkeypatch.setattr(
            deadletter, "_send", lambda settings, topic, fresh: self.sent.append((topic, fresh))
        )


def test_requeue_sends_a_dead_run_back_to_the_queue_its_message_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = DlqRig(monkeypatch, {"cluster-b": [dead("cluster-b", "cluster-b.retry")]})
    result = CliRunner().invoke(cli, ["dlq", "requeue", RUN_ID, "--topic", "cluster-b"])
    assert result.exit_code == 0, result.output
    assert rig.read == [["cluster-b"]]
    [(topic, fresh)] = rig.sent
    assert (topic, fresh.queue, fresh.attempt) == ("cluster-b", "cluster-b", 1)
    assert f"requeued run {RUN_ID} (job backup, dead at" in result.stdout
    assert result.stdout.rstrip().endswith("to cluster-b as attempt 1 of 1")


def test_requeue_of_a_run_without_a_queue_goes_to_the_queue_whose_dlq_held_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = DlqRig(monkeypatch, {"cluster-a": [dead(None, "cluster-a")]})
    result = CliRunner().invoke(cli, ["dlq", "requeue", RUN_ID, "--topic", "cluster-a"])
    assert result.exit_code == 0, result.output
    assert [t for t, _ in rig.sent] == ["cluster-a"]


def test_requeue_to_a_queue_whose_topic_is_gone_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = DlqRig(monkeypatch, {"cluster-a": [dead("retired", "cluster-a")]})
    result = CliRunner().invoke(cli, ["dlq", "requeue", RUN_ID, "--topic", "cluster-a"])
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "belongs to queue retired, and that topic does not exist" in result.stderr
    assert rig.sent == []


def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.cron"
    path.write_text(JOBS)
    return path


def test_dlq_with_a_job_file_covers_every_queue_unless_topic_is_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    early, late = T0, T0.replace(minute=5)
    rig = DlqRig(
        monkeypatch,
        {
            "kcron.jobs": [dead("kcron.jobs", "kcron.jobs", "a" * 8 + RUN_ID[8:], late)],
            "cluster-b": [dead("cluster-b", "cluster-b", dead_at=early)],
        },
    )
    env = {"KCRON_JOBS": str(job_file(tmp_path))}
    listed = CliRunner().invoke(cli, ["dlq", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert rig.read == [["kcron.jobs", "cluster-a", "cluster-b"]]
    header, first, second = listed.stdout.splitlines()
    assert header.split()[:3] == ["DEAD", "AT", "QUEUE"]
    assert first.split()[1] == "cluster-b" and second.split()[1] == "kcron.jobs", "oldest first"
    assert "2 dead letters in kcron.jobs.dlq, cluster-a.dlq, cluster-b.dlq" in listed.stderr

    as_json = CliRunner().invoke(cli, ["dlq", "list", "--json"], env=env)
    assert [d["queue"] for d in json.loads(as_json.stdout)] == ["cluster-b", "kcron.jobs"]

    one = CliRunner().invoke(cli, ["dlq", "list", "--topic", "cluster-b"], env=env)
    assert rig.read[-1] == ["cluster-b"]
    assert "QUEUE" not in one.stdout and "1 dead letter in cluster-b.dlq" in one.stderr

    env_topic = CliRunner().invoke(cli, ["dlq", "list"], env=env | {"KCRON_TOPIC": "cluster-b"})
    assert env_topic.exit_code == 0
    assert rig.read[-1] == ["cluster-b", "cluster-a"], "KCRON_TOPIC names the default topic"

    requeued = CliRunner().invoke(cli, ["dlq", "requeue", RUN_ID], env=env)
    assert requeued.exit_code == 0, requeued.output
    assert [t for t, _ in rig.sent] == ["cluster-b"]


def test_dlq_without_a_job_file_stays_on_the_default_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = DlqRig(monkeypatch, {})
    result = CliRunner().invoke(cli, ["dlq", "list"], env={"KCRON_JOBS": None})
    assert result.exit_code == 0, result.output
    assert rig.read == [["kcron.jobs"]]
    assert "0 dead letters in kcron.jobs.dlq" in result.stderr
