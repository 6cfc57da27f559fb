"""The producer service on fakes (tests/unit/producer_fakes.py), on a virtual clock.

Take-over keeps the elector's membership alive and acts on a role change
before dispatching; ticks commit runs and state together; failures are
counted and retried; fencing stops the service; reloads keep the last good
job set; signals stop it, and a second one stops it at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from kcron import jobfile, misfire
from kcron.errors import ExitCode, FencedError, JobFileError
from kcron.message import decode
from kcron.producer import ProducerService
from kcron.settings import Settings
from tests.unit.producer_fakes import (
    FakeElector,
    FakeHost,
    FakeKafka,
    FakeTxnProducer,
    RecordingDispatcher,
    kafka_error,
    transactional,
)

NOW = datetime(2028, 1, 1, 10, 0, 30, tzinfo=UTC)
LAST = datetime(2028, 1, 1, 9, 58, tzinfo=UTC)  # 09:59 and 10:00 were missed


def at(hour: int, minute: int) -> datetime:
    return datetime(2028, 1, 1, hour, minute, tzinfo=UTC)


class Rig:
    """A service on a job file, with its fakes."""

    def __init__(self, tmp_path: Path, text: str = "name=m * * * * * echo m\n", **values: object):
        self.jobs = tmp_path / "jobs.cron"  # producer id "jobs"
        self.jobs.write_text(text)
        self.host = FakeHost(NOW)
        self.elector = FakeElector({})
        self.kafka = FakeKafka(self.elector)
        self.service = ProducerService(
            Settings.from_values(values), str(self.jobs), self.kafka, self.host
        )

    def script(self, **steps: object) -> None:
        """poll number -> action; "stop" requests a stop."""
        for poll, action in steps.items():
            number = int(poll.removeprefix("p"))
            self.elector.script[number] = (
                self.service.request_stop if action == "stop" else action  # type: ignore[assignment]
            )

    def stop_at(self, when: datetime) -> None:
        """Stop on the first poll at or after ``when`` (virtual time)."""
        original = self.elector.poll

        def poll() -> None:
            original()
            if self.host.clock >= when:
                self.service.request_stop()

        self.elector.poll = poll  # type: ignore[method-assign]

    def transactional(self, sleeps: list[float] | None = None) -> FakeTxnProducer:
        txn = FakeTxnProducer()
        self.kafka.make_dispatcher = transactional(txn, sleeps)
        return txn

    def recorded(self) -> list[RecordingDispatcher]:
        return [d for d in self.kafka.dispatchers if isinstance(d, RecordingDispatcher)]

    def failures(self, job: str = "m") -> float:
        assert self.kafka.metrics is not None
        value = self.kafka.metrics.registry.get_sample_value(
            "kcron_delivery_failures_total", {"kcron_job": job, "queue": "kcron.jobs"}
        )
        return value or 0.0


def logged(caplog: pytest.LogCaptureFixture, msg: str) -> list[dict[str, object]]:
    """The structured fields of each record with message ``msg``."""
    return [r.kcron_fields for r in caplog.records if r.msg == msg]  # type: ignore[attr-defined]


def runs_in(txn: list[tuple[str, bytes, bytes]]) -> list[tuple[str, datetime]]:
    return [(m.job, m.scheduled_for) for m in (decode(v) for t, _k, v in txn if t == "kcron.jobs")]


def states_in(txn: list[tuple[str, bytes, bytes]]) -> dict[bytes, tuple[str, datetime] | None]:
    return {k: misfire.decode_state(v) for t, k, v in txn if t == "kcron.jobs.state"}


# -- election and take-over ---------------------------------------------------


def test_take_over_polls_the_elector_and_then_dispatches_the_missed_tick(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": LAST}
    rig.script(p1="assign", p12="stop")
    assert rig.service.run() == 0
    # polled on each batch of the state read (2, 3, 4), then between the steps
    assert rig.kafka.polls_in_read_state == [2, 3, 4]
    (dispatcher,) = rig.recorded()
    assert [r.scheduled_for for r in dispatcher.dispatched] == [at(10, 0)]


def test_a_revocation_during_take_over_is_not_swallowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": LAST}
    rig.script(p1="assign", p3="revoke", p12="stop")
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert rig.service.run() == 0
    (dispatcher,) = rig.recorded()
    assert dispatcher.dispatched == [], "dispatched after the role was lost"
    assert dispatcher.closed
    assert "lost the active role; standing by" in caplog.messages


def test_a_role_lost_and_regained_during_take_over_takes_over_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": LAST}
    rig.script(p1="assign", p3="revoke", p4="assign", p20="stop")
    assert rig.service.run() == 0
    first, second = rig.recorded()
    assert first.closed and first.dispatched == []
    assert [r.scheduled_for for r in second.dispatched] == [at(10, 0)]


def test_reboot_jobs_run_once_when_becoming_active_not_after_a_later_take_over(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, "name=boot @reboot echo boot\nname=m * * * * * echo m\n")
    rig.kafka.state = {"m": NOW}
    rig.script(p1="assign", p10="revoke", p11="assign", p30="stop")
    assert rig.service.run() == 0
    first, second = rig.recorded()
    assert [r.job.name for r in first.dispatched] == ["boot"]
    assert second.dispatched == []


def test_take_over_catches_up_every_missed_tick_in_one_transaction_with_the_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, misfire="all")
    rig.kafka.state = {"m": datetime(2028, 1, 1, 9, 57, tzinfo=UTC)}
    txn = rig.transactional()
    rig.script(p1="assign", p9="stop")
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert rig.service.run() == 0
    (committed,) = txn.committed
    assert runs_in(committed) == [("m", at(9, 58)), ("m", at(9, 59)), ("m", at(10, 0))]
    assert states_in(committed) == {b"jobs/m": ("m", at(10, 0))}
    (became,) = logged(caplog, "became the active producer")
    assert (became["catch_up_runs"], became["jobs_with_state"]) == (3, 1)


def test_misfire_skip_logs_the_missed_ticks_and_resumes_at_the_next_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, misfire="skip")
    rig.kafka.state = {"m": LAST}
    txn = rig.transactional()
    rig.script(p1="assign")
    rig.stop_at(datetime(2028, 1, 1, 10, 1, 5, tzinfo=UTC))
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert rig.service.run() == 0
    (skipped,) = logged(caplog, "missed runs skipped")
    assert (skipped["job"], skipped["skipped"]) == ("m", 2)
    assert [runs_in(c) for c in txn.committed] == [[("m", at(10, 1))]]


# -- ticks --------------------------------------------------------------------


def test_a_tick_commits_its_due_runs_and_their_state_in_one_transaction_ahead_of_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, "name=m * * * * * echo m\nname=n * * * * * echo n\n")
    rig.kafka.state = {"m": NOW, "n": NOW}  # nothing missed
    txn = rig.transactional()
    committed_at: list[datetime] = []
    txn.during_produce = lambda: committed_at.append(rig.host.clock)
    rig.script(p1="assign")
    rig.stop_at(datetime(2028, 1, 1, 10, 1, 30, tzinfo=UTC))
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert rig.service.run() == 0
    (committed,) = txn.committed
    assert runs_in(committed) == [("m", at(10, 1)), ("n", at(10, 1))]
    assert states_in(committed) == {b"jobs/m": ("m", at(10, 1)), b"jobs/n": ("n", at(10, 1))}
    assert txn.calls[:6] == [
        "init", "begin", "produce kcron.jobs", "produce kcron.jobs", "produce kcron.jobs.state",
        "produce kcron.jobs.state",
    ]  # fmt: skip
    assert txn.calls[6] == "commit"
    # dispatch-ahead (1 s): sent a second before the minute, never after it
    assert {t.replace(microsecond=0) for t in committed_at} == {
        datetime(2028, 1, 1, 10, 0, 59, tzinfo=UTC)
    }
    dispatched = logged(caplog, "run dispatched")
    assert [(r["job"], r["partition"]) for r in dispatched] == [("m", 0), ("n", 0)]


def test_a_failed_commit_is_aborted_counted_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": LAST}
    sleeps: list[float] = []
    txn = rig.transactional(sleeps)
    txn.fail_commits = [kafka_error(KafkaError._TIMED_OUT, abort=True)]
    rig.script(p1="assign", p9="stop")
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert rig.service.run() == 0
    assert txn.calls[1:] == [
        "begin", "produce kcron.jobs", "produce kcron.jobs.state", "commit", "abort",
        "begin", "produce kcron.jobs", "produce kcron.jobs.state", "commit", "flush",
    ]  # fmt: skip
    assert [runs_in(c) for c in txn.committed] == [[("m", at(10, 0))]]
    assert rig.failures() == 1
    assert sleeps == [0.2]
    assert "transaction failed; retrying" in caplog.messages


def test_a_dispatch_that_keeps_failing_is_retried_on_the_next_pass_and_never_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": LAST}
    sleeps: list[float] = []
    txn = rig.transactional(sleeps)
    txn.fail_commits = [kafka_error(KafkaError._TIMED_OUT, abort=True) for _ in range(5)]
    rig.script(p1="assign", p12="stop")
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert rig.service.run() == 0
    assert "dispatch failed; will retry" in caplog.messages
    assert [runs_in(c) for c in txn.committed] == [[("m", at(10, 0))]]
    assert txn.aborted == 5
    assert rig.failures() == 5
    assert sleeps == [0.2, 0.4, 0.8, 1.6]  # between attempts; then the loop's own 1 s
    assert 1.0 in rig.host.waits


@pytest.mark.parametrize(
    "error",
    [kafka_error(KafkaError._FENCED), kafka_error(KafkaError._TIMED_OUT, fatal=True)],
    ids=["fenced", "fatal"],
)
def test_a_fenced_producer_stops_with_exit_75_and_commits_nothing(
    tmp_path: Path, error: Exception
) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": LAST}
    txn = rig.transactional()
    txn.fail_commits = [error]
    rig.script(p1="assign", p12="stop")
    with pytest.raises(FencedError) as raised:
        rig.service.run()
    assert raised.value.exit_code == ExitCode.TEMPFAIL == 75
    assert txn.committed == []
    assert rig.elector.closed, "a fenced producer leaves the group for the new one"
    assert rig.host.restored


# -- reload -------------------------------------------------------------------


def test_a_bad_job_file_keeps_the_last_good_jobs_and_a_good_one_is_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": NOW}
    txn = rig.transactional()

    def break_file_and_hup() -> None:
        rig.jobs.write_text("name=m * * * * * echo m\nname=x not a schedule\n")
        rig.host.on_hup(signal.SIGHUP, None)

    def fix_file() -> None:
        rig.jobs.write_text("name=m * * * * * echo m\nname=new * * * * * echo new\n")

    rig.script(p1="assign", p10=break_file_and_hup, p40=fix_file)
    rig.stop_at(datetime(2028, 1, 1, 10, 2, 30, tzinfo=UTC))
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert rig.service.run() == 0
    (failed,) = logged(caplog, "reload failed; keeping the last good job set")
    assert failed["reason"] == "SIGHUP"
    assert any(":2:" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    (reloaded,) = logged(caplog, "job file reloaded")
    assert (reloaded["reason"], reloaded["added"]) == ("file changed", 1)
    # 10:01 from the last good set, 10:02 from the new one: none repeated, none skipped
    assert [runs_in(c) for c in txn.committed] == [
        [("m", at(10, 1))],
        [("m", at(10, 2)), ("new", at(10, 2))],
    ]


# -- stopping -----------------------------------------------------------------


def test_a_stop_signal_ends_the_loop_flushes_and_leaves_the_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": LAST}
    txn = rig.transactional()
    rig.script(p1="assign", p9=lambda: rig.host.on_stop(signal.SIGTERM, None))
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert rig.service.run() == 0
    assert rig.host.installed and rig.host.restored
    assert rig.elector.polls == 9, "the loop ran on after the stop flag"
    assert txn.calls[-1] == "flush"
    assert rig.elector.closed
    assert rig.host.exited is None
    assert caplog.messages[-1] == "producer stopped"


def test_a_second_signal_during_a_dispatch_aborts_it_and_exits_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": LAST}
    txn = rig.transactional()

    def two_signals() -> None:
        rig.host.on_stop(signal.SIGTERM, None)
        rig.host.on_stop(signal.SIGINT, None)

    txn.during_produce = two_signals
    rig.script(p1="assign", p30="stop")
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        assert rig.service.run() == 128 + signal.SIGINT
    assert rig.host.exited == 130
    assert txn.committed == []
    assert txn.calls[-1] == "abort" and "commit" not in txn.calls
    assert not rig.elector.closed, "no goodbye to the group when stopping at once"
    assert "producer stopped" not in caplog.messages
    (line,) = [r for r in caplog.records if r.msg.startswith("second signal")]
    assert line.kcron_fields["signal"] == "SIGINT"  # type: ignore[attr-defined]
    assert rig.host.restored


def test_a_second_signal_while_flushing_at_stop_exits_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": LAST}
    txn = rig.transactional()
    txn.outstanding = 1  # the flush would wait for 30 s
    txn.during_flush = lambda: rig.host.on_stop(signal.SIGTERM, None)
    rig.script(p1="assign", p9=lambda: rig.host.on_stop(signal.SIGTERM, None))
    assert rig.service.run() == 128 + signal.SIGTERM
    assert txn.calls.count("flush") == 1
    assert rig.host.exited == 143


def test_a_second_signal_while_leaving_the_group_exits_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": NOW}
    release = threading.Event()
    rig.elector.close_hangs = release  # e.g. a join in flight holds the LeaveGroup back

    def second_signal_while_closing() -> None:
        if rig.elector.closing:
            rig.host.on_stop(signal.SIGTERM, None)

    rig.host.during_wait = second_signal_while_closing
    rig.script(p1="assign", p9=lambda: rig.host.on_stop(signal.SIGTERM, None))
    try:
        assert rig.service.run() == 143
        assert rig.host.exited == 143
        assert not rig.elector.closed
    finally:
        release.set()


def test_a_single_signal_waits_until_the_group_is_left(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.kafka.state = {"m": NOW}
    release = threading.Event()
    rig.elector.close_hangs = release
    waits_while_leaving: list[float] = []

    def leaving() -> None:
        if rig.elector.closing:
            waits_while_leaving.append(rig.host.waits[-1])
            if len(waits_while_leaving) == 3:
                release.set()

    rig.host.during_wait = leaving
    rig.script(p1="assign", p9=lambda: rig.host.on_stop(signal.SIGTERM, None))
    assert rig.service.run() == 0
    assert rig.elector.closed
    assert len(waits_while_leaving) >= 3
    assert rig.host.exited is None


# -- start-up: the job file is parsed while the election group is joined --------


def test_a_bad_job_file_is_reported_at_once_even_while_the_broker_does_not_answer(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, "name=m 61 * * * * echo m\n")
    broker_answers = threading.Event()
    rig.kafka.prepare = broker_answers.wait  # type: ignore[method-assign]
    try:
        with pytest.raises(JobFileError) as info:
            rig.service.run()
    finally:
        broker_answers.set()
    assert "jobs.cron:1:" in str(info.value)
    assert rig.elector.closed is False  # never created: nothing to leave


def test_the_election_join_starts_before_the_job_file_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path)
    rig.script(p1="stop")
    joined = threading.Event()
    original_elector = rig.kafka.elector

    def elector() -> FakeElector:
        joined.set()
        return original_elector()

    rig.kafka.elector = elector  # type: ignore[method-assign]
    original_load = jobfile.load

    def load(*args: object, **kwargs: object) -> jobfile.JobFile:
        # The join thread gets there while the file is still being parsed.
        assert joined.wait(5), "the join did not start while the file was parsed"
        return original_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jobfile, "load", load)
    assert rig.service.run() == 0
