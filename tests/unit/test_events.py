"""Run events and the views built from them: what kcron runs and kcron jobs show."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kcron import events, history, jobfile
from kcron.errors import DecodeError
from kcron.executor import Outcome
from kcron.message import RunMessage, decode
from tests.unit.fake_worker_kafka import RETRY, TOPIC, Harness, Plan, a_run

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
EVENTS = f"{TOPIC}.events"
P0 = (TOPIC, 0)


def run(job: str = "backup", n: int = 0, **changes: Any) -> RunMessage:
    return a_run(job, n=n, **changes)


def started(msg: RunMessage, at: datetime, lateness_ms: int = 5) -> dict[str, Any]:
    return events.started(
        msg, queue=TOPIC, worker="w1", partition=P0, offset=0, started_at=at,
        lateness_ms=lateness_ms,
    )  # fmt: skip


def finished(
    msg: RunMessage,
    at: datetime,
    outcome: str = "succeeded",
    code: int | None = 0,
    step: str = "committed",
) -> dict[str, Any]:
    finish = events.Finish(outcome, code, 1500, "line one\nlast line\n", step, at)
    return events.finished(msg, queue=TOPIC, worker="w1", finish=finish)


def roundtrip(event: dict[str, Any]) -> dict[str, Any]:
    decoded = events.decode(events.encode(event))
    assert decoded is not None
    return decoded


# -- encoding ------------------------------------------------------------------------


def test_events_round_trip_with_what_an_operator_asks_about():
    msg = run(trigger="manual")
    start = roundtrip(started(msg, T0, 1234))
    assert (start["type"], start["id"], start["job"], start["attempt"]) == (
        "started", msg.id, "backup", 1,
    )  # fmt: skip
    assert start["lateness_ms"] == 1234 and start["trigger"] == "manual"
    assert (start["topic"], start["partition"], start["offset"]) == (TOPIC, 0, 0)
    assert start["started_at"] == "2026-12-01T08:00:00.000Z"
    end = roundtrip(finished(msg, T0 + timedelta(seconds=2), "failed", 3, "retry"))
    assert (end["outcome"], end["exit_code"], end["next"], end["duration_ms"]) == (
        "failed", 3, "retry", 1500,
    )  # fmt: skip
    assert end["output_tail"].endswith("last line\n")


def test_the_output_tail_is_bounded():
    finish = events.Finish("failed", 1, 1, "x" * 10_000 + "END", "committed", T0)
    event = events.finished(run(), queue=TOPIC, worker="w", finish=finish)
    assert len(event["output_tail"]) == events.MAX_TAIL_CHARS
    assert event["output_tail"].endswith("END")


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"not json", b"[1]", b'{"v": 2, "type": "started", "id": "x", "job": "j",'
     b' "attempt": 1}', b'{"v": 1, "type": "other", "id": "x", "job": "j", "attempt": 1}',
     b'{"v": 1, "type": "started", "id": "x", "job": "j", "attempt": "1"}'],
)  # fmt: skip
def test_unreadable_events_are_skipped_not_fatal(raw):
    assert events.decode(raw) is None


# -- folding: one line per run, its latest state ----------------------------------------


def test_a_run_started_and_not_finished_is_running():
    msg = run()
    [view] = events.fold([started(msg, T0)])
    assert (view.outcome, view.exit_code, view.finished_at) == ("running", None, None)
    assert view.to_json()["trigger"] == "schedule"


def test_a_retried_run_folds_to_its_last_attempt_and_keeps_every_event():
    first = run(max_attempts=2)
    second = dataclasses.replace(first, attempt=2)
    stream = [
        started(first, T0),
        finished(first, T0 + timedelta(seconds=1), "failed", 1, "retry"),
        started(second, T0 + timedelta(seconds=5)),
        finished(second, T0 + timedelta(seconds=6), "succeeded", 0),
    ]
    [view] = events.fold(stream)
    assert (view.attempt, view.outcome, view.exit_code, view.next) == (
        2,
        "succeeded",
        0,
        "committed",
    )
    assert len(view.events) == 4
    assert view.started_at == "2026-12-01T08:00:05.000Z"
    detail = history.run_detail(view)
    assert "attempt 1/2  finished" in detail and "next: retry" in detail
    assert "    | last line" in detail


def test_runs_list_by_when_they_were_due_not_when_a_backfill_ran_them():
    old = run(n=1, scheduled_for=T0 - timedelta(hours=1))
    new = run(n=2, scheduled_for=T0)
    views = events.fold([started(new, T0), started(old, T0 + timedelta(seconds=1))])
    assert [v.id for v in views] == [new.id, old.id]


def test_a_late_event_of_an_earlier_attempt_does_not_rewind_the_run():
    first = run(max_attempts=2)
    second = dataclasses.replace(first, attempt=2)
    [view] = events.fold([started(second, T0), finished(first, T0, "failed", 1, "retry")])
    assert (view.attempt, view.outcome) == (2, "running")


def test_a_run_delivered_again_after_its_finish_is_running_again():
    msg = run()
    stream = [started(msg, T0), finished(msg, T0), started(msg, T0 + timedelta(seconds=9))]
    [view] = events.fold(stream)
    assert view.outcome == "running"


def test_skipped_and_other_outcomes_are_shown_as_the_worker_wrote_them():
    msg = run()
    [view] = events.fold([finished(msg, T0, "skipped", None)])
    assert (view.outcome, view.exit_code) == ("skipped", None)


def _history() -> list[events.RunView]:
    stream = []
    for n in range(6):
        job = "backup" if n % 2 == 0 else "report"
        msg = run(job, n=n)
        at = T0 + timedelta(minutes=n)
        stream.append(started(msg, at))
        if n != 5:
            outcome = "failed" if n == 2 else "succeeded"
            stream.append(finished(msg, at + timedelta(seconds=1), outcome, 1 if n == 2 else 0))
    return events.fold(stream)


def test_runs_come_newest_first_and_filter_by_job_outcome_since_and_limit():
    views = _history()
    assert [v.id for v in views] == [run(j, n=n).id for n, j in reversed(list(enumerate(
        ["backup", "report"] * 3)))]  # fmt: skip
    assert {v.job for v in events.select(views, job="report")} == {"report"}
    [failed] = events.select(views, outcome="failed")
    assert failed.id == run("backup", n=2).id
    assert [v.outcome for v in events.select(views, outcome="running")] == ["running"]
    recent = events.select(views, since=T0 + timedelta(minutes=4))
    assert len(recent) == 2
    assert len(events.select(views, limit=3)) == 3
    assert events.find(views, run("report", n=3).id.upper()) is not None


def test_the_runs_table_has_a_line_per_run_with_the_operator_columns():
    table = history.runs_table(_history()[:2]).splitlines()
    assert table[0].split()[:4] == ["SCHEDULED", "FOR", "JOB", "RUN"]
    assert "running" in table[1] and "succeeded" in table[2] and "1.5s" in table[2]
    assert history.duration(125_000) == "2m05s" and history.duration(None) == "-"


def test_the_jobs_view_shows_next_run_last_outcome_and_active_runs():
    jobs = jobfile.parse(
        "name=backup  0 * * * *  backup.sh\nname=report  */5 * * * *  report.sh\n"
        "name=never  @reboot  warm.sh\n", "jobs.txt",
    ).jobs  # fmt: skip
    now = T0 + timedelta(minutes=7)
    rows = {r["name"]: r for r in history.job_rows(jobs, _history(), now, UTC, TOPIC)}
    assert rows["backup"]["next_run"] == "2026-12-01T09:00:00.000Z"
    assert rows["report"]["next_run"] == "2026-12-01T08:10:00.000Z"
    assert rows["backup"]["last_outcome"] == "succeeded" and rows["backup"]["active"] == 0
    assert rows["report"]["last_outcome"] == "running" and rows["report"]["active"] == 1
    assert rows["never"]["last_run"] is None and rows["never"]["next_run"] is None
    table = history.jobs_table(list(rows.values()))
    assert table.splitlines()[0].split()[:3] == ["NAME", "SCHEDULE", "QUEUE"]


# -- the trigger field of the run message -----------------------------------------------


def test_trigger_is_optional_and_round_trips():
    plain = run()
    assert "trigger" not in json.loads(plain.encode())
    assert decode(plain.encode()).trigger is None
    manual = run(trigger="manual")
    assert decode(manual.encode()).trigger == "manual"
    bad = json.loads(plain.encode()) | {"trigger": 7}
    with pytest.raises(DecodeError, match="field 'trigger' has type integer"):
        decode(json.dumps(bad).encode())


# -- the worker: events in the confirmed hand-off -----------------------------------------


def test_a_run_is_committed_only_after_its_events_are_confirmed(caplog):
    h = Harness({"backup": Plan(seconds=1)}, instance="w7")
    h.kafka.add(P0, a_run(trigger="manual").encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    seen: list[tuple[int, bool]] = []

    def watch() -> bool:  # every store, with whether the finished event was confirmed then
        for _key, position in h.kafka.store_calls[len(seen) :]:
            done = [e for e in h.kafka.events if json.loads(e.value)["type"] == "finished"]
            seen.append((position, bool(done) and all(e.delivered for e in done)))
        return bool(seen)

    h.kafka.when(watch, h.signal)
    assert h.run() == 0
    assert seen and all(confirmed for _, confirmed in seen)
    assert h.kafka.committed == {P0: 1}
    kinds = [(e.topic, json.loads(e.value)["type"]) for e in h.kafka.events]
    assert kinds == [(EVENTS, "started"), (EVENTS, "finished")]
    start, end = (json.loads(e.value) for e in h.kafka.events)
    assert (start["worker"], start["trigger"], start["offset"]) == ("w7", "manual", 0)
    assert (end["outcome"], end["next"], end["duration_ms"]) == ("succeeded", "committed", 1000)
    assert h.kafka.events[0].key == a_run().key


def test_an_event_not_delivered_leaves_the_run_uncommitted(caplog):
    caplog.set_level(logging.ERROR, logger="kcron")
    h = Harness({"backup": Plan(seconds=1)})
    h.kafka.fail_delivery.add(EVENTS)
    h.kafka.add(P0, a_run().encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(3, h.signal)
    assert h.run() == 0
    assert h.kafka.committed == {}
    assert any(
        r.getMessage().startswith("run event not delivered; the run stays uncommitted")
        for r in caplog.records
    )


def test_events_are_produced_off_the_loop_thread_and_retries_on_it():
    # Run events were 42 % of the loop thread's work (docs/performance.md): the
    # courier's thread builds and produces them; a retry stays on the loop.
    h = Harness({"backup": Plan(seconds=1, outcome=Outcome.FAILED, exit_code=2)})
    h.kafka.add(P0, a_run(max_attempts=3).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: len(h.kafka.events) >= 2, h.signal)
    assert h.run() == 0
    assert {e.thread for e in h.kafka.events} == {"kcron-events"}
    [retry] = h.kafka.produced
    assert retry.thread == threading.current_thread().name
    assert h.kafka.committed == {P0: 1}


def test_an_event_that_cannot_be_produced_leaves_the_run_uncommitted_and_counted(caplog):
    caplog.set_level(logging.ERROR, logger="kcron")
    h = Harness({"backup": Plan(seconds=1)})
    h.kafka.fail_produce.add(EVENTS)
    h.kafka.add(P0, a_run().encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(3, h.signal)
    assert h.run() == 0
    assert h.kafka.committed == {}
    assert h.counter("kcron_handoff_failures_total", topic=EVENTS) == 2  # started, finished
    assert any(
        r.getMessage().startswith("run event not delivered; the run stays uncommitted")
        for r in caplog.records
    )


def test_a_retried_run_records_its_next_step_with_the_retry():
    h = Harness({"backup": Plan(seconds=1, outcome=Outcome.FAILED, exit_code=2)})
    h.kafka.add(P0, a_run(max_attempts=3).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: len(h.kafka.events) >= 2, h.signal)
    assert h.run() == 0
    [retry] = h.kafka.produced
    assert retry.topic == RETRY
    end = json.loads(h.kafka.events[-1].value)
    assert (end["outcome"], end["exit_code"], end["next"]) == ("failed", 2, "retry")
    assert end["retry_at"] == json.loads(retry.value)["not_before"]
    assert h.kafka.committed == {P0: 1}


def test_events_is_a_reserved_queue_suffix():
    from kcron.topics import queue_name_problem

    assert "run-events topic of queue 'x'" in (queue_name_problem("x.events") or "")
    with pytest.raises(DecodeError):
        decode(b"{}")


def test_the_worker_creates_its_events_topic_with_the_configured_retention(monkeypatch):
    from kcron import kafka
    from kcron.settings import Settings

    made: list[tuple[str | None, int | None, dict[str, str] | None]] = []

    def ensure(_s: Settings, topic=None, partitions=None, config=None) -> int:
        made.append((topic, partitions, config))
        return 2

    monkeypatch.setattr(kafka, "ensure_topic", ensure)
    kafka.ensure_worker_topics(Settings(topic="q", events_retention_s=2 * 3600))
    assert ("q.events", 1, {"retention.ms": "7200000"}) in made


def test_consume_takes_the_events_retention_as_a_duration(monkeypatch):
    from click.testing import CliRunner

    from kcron import worker
    from kcron.cli import cli

    seen: list[float] = []

    class FakeWorker:
        def __init__(self, settings: Any, **_: Any) -> None:
            seen.append(settings.events_retention_s)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(worker, "Worker", FakeWorker)
    # The run-as check would refuse a root test runner: this test is about the retention.
    monkeypatch.setenv("KCRON_ALLOW_ROOT_JOBS", "true")
    assert CliRunner().invoke(cli, ["consume", "--events-retention", "3d"]).exit_code == 0
    assert seen == [3 * 86400]
    bad = CliRunner().invoke(cli, ["consume", "--events-retention", "soon"])
    assert bad.exit_code == 2 and "not a duration" in bad.output


# -- the commands, over a fake events topic ------------------------------------------------


@pytest.fixture
def history_topic(monkeypatch):
    from kcron import runlog

    first = run("backup", n=7, max_attempts=2)
    second = dataclasses.replace(first, attempt=2)
    other = run("report", n=8, scheduled_for=T0 + timedelta(minutes=1))
    stream = [
        started(first, T0),
        finished(first, T0, "failed", 4, "retry"),
        started(second, T0 + timedelta(seconds=3)),
        finished(second, T0 + timedelta(seconds=4), "failed", 4, "dead_lettered"),
        started(other, T0 + timedelta(minutes=1)),
    ]
    read: list[tuple[list[str], datetime | None]] = []

    def read_events(_settings, queues, since=None, idle_s=None):
        read.append((list(queues), since))
        return [roundtrip(e) for e in stream]

    monkeypatch.setattr(runlog, "read_events", read_events)
    return first, other, read


def test_kcron_runs_json_lists_each_run_once_with_its_latest_state(history_topic):
    from click.testing import CliRunner

    from kcron.cli import cli

    first, other, read = history_topic
    out = CliRunner().invoke(cli, ["runs", "--json", "--topic", TOPIC])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [(r["id"], r["outcome"], r["exit_code"], r["attempt"]) for r in rows] == [
        (other.id, "running", None, 1),
        (first.id, "failed", 4, 2),
    ]
    assert set(rows[0]) >= {"id", "job", "outcome", "exit_code", "scheduled_for", "started_at",
                            "finished_at", "attempt"}  # fmt: skip
    assert read == [([TOPIC], None)]
    failed = CliRunner().invoke(cli, ["runs", "--outcome", "failed", "--topic", TOPIC])
    assert first.id in failed.stdout and other.id not in failed.stdout
    assert "1 of 2 runs in jobs.events" in failed.stderr


def test_kcron_runs_run_id_shows_every_attempt_or_exits_66(history_topic):
    from click.testing import CliRunner

    from kcron.cli import cli

    first, _, _ = history_topic
    out = CliRunner().invoke(cli, ["runs", first.id, "--topic", TOPIC])
    assert out.exit_code == 0
    assert out.stdout.count("started") == 2 and out.stdout.count("finished") == 2
    assert "next: dead_lettered" in out.stdout
    missing = CliRunner().invoke(cli, ["runs", "no-such-run", "--topic", TOPIC])
    assert missing.exit_code == 66 and "no run with id no-such-run" in missing.stderr
