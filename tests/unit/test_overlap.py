"""overlap=forbid without a broker: the job-file option, the message field and key,
the dispatchers' keys, the retry verdict, and the worker's skip and post-assignment
wait, driven through the fake Kafka port (docs/operations.md#overlap)."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from kcron import jobfile, message, retry
from kcron.cli import cli
from kcron.dispatch import Dispatcher, TransactionalDispatcher
from kcron.errors import DecodeError, JobFileError
from kcron.executor import ExecResult, Outcome
from kcron.message import RunMessage, decode
from kcron.metrics import ProducerMetrics as Metrics
from kcron.producer import ProducerService
from kcron.retry import Verdict
from kcron.schedule import Run
from kcron.settings import Settings
from kcron.worker.partitions import Partitions
from tests.unit.fake_worker_kafka import LABELS, RETRY, TOPIC, Harness, Plan, a_run, label
from tests.unit.fake_worker_kafka import T0 as WORKER_T0
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
P0 = (TOPIC, 0)
P1 = (TOPIC, 1)
SKIPPED = "run skipped"


def parse(text: str) -> list[jobfile.Job]:
    return list(jobfile.parse(text, FILE).jobs)


def errors_of(text: str) -> list[str]:
    with pytest.raises(JobFileError) as info:
        jobfile.parse(text, FILE)
    return [str(e) for e in info.value.errors]


# -- the job file -------------------------------------------------------------------


def test_overlap_forbid_is_read_and_shown_and_allow_is_the_default() -> None:
    forbid, plain, allow = parse(
        "name=a overlap=forbid * * * * * sleep 90\n"
        "name=b * * * * * echo b\n"
        "name=c overlap=allow * * * * * echo c\n"
    )
    assert (forbid.overlap, plain.overlap, allow.overlap) == ("forbid", "allow", "allow")
    assert forbid.options() == {"overlap": "forbid"}
    assert plain.options() == {} and allow.options() == {}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("replace", "'replace' is not supported; use allow or forbid"),
        ("Forbid", "must be allow or forbid"),
        ("", "must be allow or forbid"),
    ],
)
def test_a_bad_overlap_is_a_file_line_error(value: str, reason: str) -> None:
    text = f"name=ok * * * * * echo ok\noverlap={value} * * * * * echo hi\n"
    assert errors_of(text) == [f"{FILE}:2: option overlap={value}: {reason}"]


def test_the_job_file_and_the_message_know_the_same_policies() -> None:
    assert jobfile.OVERLAP_POLICIES == message.OVERLAP_POLICIES


def test_check_shows_the_policy(tmp_path: Path) -> None:
    path = tmp_path / "jobs.cron"
    path.write_text("name=slow overlap=forbid * * * * * sleep 90\nname=fast * * * * * true\n")
    text = CliRunner().invoke(cli, ["check", str(path)], env={})
    assert text.exit_code == 0, text.output
    assert "  options:  overlap=forbid" in text.stdout
    as_json = CliRunner().invoke(cli, ["check", "--format", "json", str(path)], env={})
    doc = json.loads(as_json.stdout)
    assert [j["options"] for j in doc["jobs"]] == [{"overlap": "forbid"}, {}]


# -- the message ----------------------------------------------------------------------


def a_message(**changes: Any) -> RunMessage:
    values: dict[str, Any] = {
        "id": RUN_ID, "job": "backup", "command": "true", "scheduled_for": T0, "produced_at": T0,
    }  # fmt: skip
    values.update(changes)
    return RunMessage(**values)


def test_the_message_carries_forbid_and_an_allow_message_encodes_as_before() -> None:
    forbid = a_message(overlap="forbid")
    assert json.loads(forbid.encode())["overlap"] == "forbid"
    assert decode(forbid.encode()) == forbid
    allow = a_message()
    assert "overlap" not in json.loads(allow.encode()), "left out while allow, as before"
    assert decode(allow.encode()).overlap == "allow"
    with_null = json.loads(allow.encode()) | {"overlap": None}
    assert decode(json.dumps(with_null).encode()).overlap == "allow"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1, "field 'overlap' has type integer"),
        ("replace", "field 'overlap': 'replace' is not a known policy (allow or forbid)"),
    ],
)
def test_an_unknown_policy_makes_the_message_undecodable(value: object, reason: str) -> None:
    # A worker must not run a newer, stricter policy as "allow".
    doc = json.loads(a_message().encode()) | {"overlap": value}
    with pytest.raises(DecodeError) as info:
        decode(json.dumps(doc).encode())
    assert info.value.reason == reason


def test_a_forbid_run_is_keyed_by_its_job_and_an_allow_run_by_its_id() -> None:
    assert a_message(overlap="forbid").key == b"backup"
    assert a_message().key == RUN_ID.encode()


def test_retries_and_requeues_keep_the_policy_and_so_the_key() -> None:
    run = a_message(overlap="forbid", max_attempts=2)
    attempt = retry.attempt_of(run, ExecResult(Outcome.FAILED, 1, 0.1, 0, False, b"", ""), T0, T0)
    for again in (retry.next_attempt(run, attempt, T0, T0), retry.requeued(run, T0)):
        assert (again.overlap, again.key) == ("forbid", b"backup")


def test_the_schema_declares_the_optional_overlap() -> None:
    path = Path(__file__).resolve().parents[2] / "kcron" / "schema" / "run-message.v1.json"
    schema = json.loads(path.read_text())
    assert "overlap" not in schema["required"]
    assert schema["properties"]["overlap"]["enum"] == ["allow", "forbid", None]
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(json.loads(a_message(overlap="forbid").encode()))
    assert not validator.is_valid(json.loads(a_message().encode()) | {"overlap": "replace"})


# -- the dispatchers: scheduled, backfill and misfire catch-up ---------------------------

JOBS = "name=slow overlap=forbid * * * * * sleep 90\nname=fast * * * * * true\n"


def runs_at(*whens: datetime) -> list[Run]:
    return [Run(when, job) for when in whens for job in parse(JOBS)]


def test_a_transaction_keys_forbid_runs_by_job_and_logs_where_each_run_landed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    txn = FakeTxnProducer()
    dispatcher = TransactionalDispatcher(
        txn, "kcron.jobs", "jobs", "kcron.jobs.state", Metrics(), lambda s: None
    )
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        dispatcher.dispatch(runs_at(T0, T0 + timedelta(minutes=1)), T0, lambda: False)
    (committed,) = txn.committed
    runs = [(key, decode(value)) for topic, key, value in committed if topic == "kcron.jobs"]
    assert [(m.job, key == m.id.encode()) for key, m in runs] == [
        ("slow", False), ("fast", True), ("slow", False), ("fast", True),
    ]  # fmt: skip
    assert [key for key, m in runs if m.job == "slow"] == [b"slow", b"slow"]
    # Two runs share the key "slow": each still reports its own offset.
    dispatched = [r.kcron_fields for r in caplog.records if r.msg == "run dispatched"]  # type: ignore[attr-defined]
    assert len({(r["run"], r["offset"]) for r in dispatched}) == 4
    assert all(r["offset"] is not None for r in dispatched)


def test_backfill_keys_forbid_runs_by_job() -> None:
    recorder = PlainRecorder()
    dispatcher = Dispatcher(recorder, "kcron.jobs", Metrics())
    for run in runs_at(T0, T0 + timedelta(minutes=1)):
        dispatcher.send(run, T0)
    assert [(key, m.overlap) for _t, key, m in recorder.sent if m.job == "slow"] == [
        (b"slow", "forbid"),
        (b"slow", "forbid"),
    ]
    assert all(key == m.id.encode() for _t, key, m in recorder.sent if m.job == "fast")


def test_misfire_catch_up_keys_forbid_runs_by_job(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.cron"
    jobs.write_text(JOBS)
    txn = FakeTxnProducer()
    kafka = FakeKafka(
        FakeElector({1: "assign"}),
        make_dispatcher=lambda metrics, sleep: TransactionalDispatcher(
            txn, "kcron.jobs", "jobs", "kcron.jobs.state", metrics, sleep
        ),
    )
    kafka.state = {"slow": T0.replace(hour=9, minute=58), "fast": T0}  # slow missed 2 ticks
    host = FakeHost(T0.replace(second=30))
    service = ProducerService(Settings(), str(jobs), kafka, host)
    elector_poll = kafka.elector_.poll

    def poll() -> None:
        elector_poll()
        if host.clock >= T0.replace(second=45):
            service.request_stop()

    kafka.elector_.poll = poll  # type: ignore[method-assign]
    assert service.run() == 0
    [catch_up] = [[(k, decode(v)) for t, k, v in c if t == "kcron.jobs"] for c in txn.committed]
    assert [(key, m.job, m.overlap) for key, m in catch_up] == [(b"slow", "slow", "forbid")]


# -- the retry verdict ---------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 3])
def test_a_skipped_run_is_committed_never_retried_or_dead_lettered(attempt: int) -> None:
    run = a_message(overlap="forbid", attempt=attempt, max_attempts=3)
    skipped = ExecResult(Outcome.SKIPPED, None, 0.0, 0, False, b"", "still running")
    decision = retry.decide(run, skipped, T0, 1.0, 10.0, random.Random(1))
    assert decision == retry.Decision(Verdict.SUCCEEDED)


# -- the worker -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kcron")


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[dict[str, Any]]:
    return [r.__dict__["kcron_fields"] for r in caplog.records if r.getMessage() == text]


def forbid_run(n: int, seconds_after: float = 0, **changes: Any) -> bytes:
    when = WORKER_T0 + timedelta(seconds=seconds_after)
    return a_run("slow", n=n, overlap="forbid", scheduled_for=when, **changes).encode()


def test_a_forbid_run_due_while_its_job_runs_is_skipped_committed_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness({"slow": Plan(seconds=90)}, grace_s=0.0)
    h.kafka.add(P0, forbid_run(0))
    h.kafka.add(P0, forbid_run(1, 60))  # the next tick, while the first still runs
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: h.kafka.stored.get(P0) == 2, h.signal)

    assert h.run() == 0

    assert h.started_ids() == ["slow-0"]
    assert h.kafka.produced == [], "no retry, no dead letter"
    assert h.kafka.committed == {P0: 2}
    assert h.counter("kcron_runs_total", queue=TOPIC, kcron_job="slow", outcome="skipped") == 1
    assert h.worker.executed == 1, "a skipped run was not executed"
    [skip] = logged(caplog, SKIPPED)
    assert (skip["job"], LABELS[skip["run"]], LABELS[skip["running"]]) == (
        "slow",
        "slow-1",
        "slow-0",
    )
    assert skip["reason"] == "an earlier run of this job is still running"
    assert skip["queue"] == TOPIC


def test_the_skip_is_decided_when_the_run_is_due_not_when_it_arrives() -> None:
    h = Harness({"slow": Plan(seconds=10)}, grace_s=0.0)
    h.kafka.add(P0, forbid_run(0))
    h.kafka.add(P0, forbid_run(1, 30))  # arrives while slow-0 runs, due after it ended
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: h.kafka.stored.get(P0) == 2, h.signal)

    assert h.run() == 0

    assert h.started_ids() == ["slow-0", "slow-1"]
    assert h.counter("kcron_runs_total", queue=TOPIC, kcron_job="slow", outcome="skipped") == 0


def test_runs_of_allow_jobs_and_of_other_forbid_jobs_still_overlap() -> None:
    h = Harness({"slow": Plan(seconds=90), "allow": Plan(seconds=90)}, grace_s=0.0)
    h.kafka.add(P0, a_run("allow", n=0).encode())
    h.kafka.add(P0, a_run("allow", n=1).encode())
    h.kafka.add(P0, forbid_run(0))
    h.kafka.add(P1, a_run("other", n=0, overlap="forbid").encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0, P1]))
    h.kafka.at(1, h.signal)

    assert h.run() == 0

    assert sorted(h.started_ids()) == ["allow-0", "allow-1", "other-0", "slow-0"]
    assert h.counter("kcron_runs_total", queue=TOPIC, kcron_job="allow", outcome="skipped") == 0


def test_a_failed_forbid_run_retries_under_its_job_key() -> None:
    h = Harness({"slow": Plan(seconds=1, outcome=Outcome.FAILED, exit_code=1)}, grace_s=0.0)
    h.kafka.add(P0, forbid_run(0))
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: bool(h.kafka.produced), h.signal)

    assert h.run() == 0

    [again] = h.kafka.produced
    assert (again.topic, again.key) == (RETRY, b"slow")


def test_forbid_runs_of_a_newly_assigned_partition_wait_for_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness({"slow": Plan(seconds=1), "allow": Plan(seconds=1)}, grace_s=5.0)
    h.kafka.add(P0, forbid_run(0))
    h.kafka.add(P0, a_run("allow").encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: h.kafka.stored.get(P0) == 2, h.signal)

    assert h.run() == 0

    assert h.pool is not None
    started = {label(j.run): j for j in h.pool.started}
    assert list(started) == ["allow-0", "slow-0"]
    assert 5 <= h.time.mono < 7, "slow-0 started at the end of the grace, then ran 1 s"
    [held] = logged(caplog, "run held: its partition just moved here and the previous owner "
                            "may still run the job")  # fmt: skip
    assert held["until"] == "2026-12-01T08:00:05.000Z"


def test_a_partition_handed_back_and_assigned_again_waits_no_more_but_a_lost_one_does() -> None:
    parts = Partitions(TOPIC, RETRY)
    t1, t2, t3 = (T0 + timedelta(seconds=s) for s in (5, 20, 40))
    parts.assign([P0, P1], quiet_until=t1)
    assert parts.quiet_until(P0) == parts.quiet_until(P1) == t1
    # An eager rebalance: everything revoked, then P0 back and a new P2.
    parts.forget({P0, P1})
    parts.assign([P0, (TOPIC, 2)], quiet_until=t2)
    assert parts.quiet_until(P0) == t1, "nobody else held it in between"
    assert parts.quiet_until((TOPIC, 2)) == t2
    assert parts.quiet_until(P1) is None
    # Lost: another worker may have held it before it came back.
    parts.forget({P0, (TOPIC, 2)}, lost=True)
    parts.assign([P0], quiet_until=t3)
    assert parts.quiet_until(P0) == t3


@pytest.mark.parametrize(("move", "starts_at"), [("revoke", 6), ("lose", 11)])
def test_after_a_rebalance_only_a_partition_that_may_have_had_another_owner_waits(
    move: str, starts_at: float
) -> None:
    h = Harness({"slow": Plan(seconds=1)}, grace_s=5.0)
    h.kafka.at(0, lambda: h.kafka.assign([P0]))

    def rebalance() -> None:
        getattr(h.kafka, move)()
        h.kafka.assign([P0])  # back to this worker: revoked in order, or lost meanwhile
        h.kafka.add(P0, forbid_run(0, 6))

    h.kafka.at(6, rebalance)
    h.kafka.when(lambda: h.kafka.stored.get(P0) == 1, h.signal)

    assert h.run() == 0

    assert h.started_ids() == ["slow-0"]
    assert starts_at + 1 <= h.time.mono < starts_at + 2
