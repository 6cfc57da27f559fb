"""kcron.worker's loop, driven through its Kafka port by a fake: no broker, no
processes, a fixed clock that moves only while the loop waits."""

from __future__ import annotations

import json
import logging
import signal
from datetime import timedelta

import pytest

from kcron.errors import BrokerError
from kcron.executor import Outcome
from kcron.retry import Verdict
from kcron.worker.port import ClientError
from tests.unit.fake_worker_kafka import DLQ, RETRY, T0, TOPIC, Harness, Plan, a_run, label

P0 = (TOPIC, 0)
P1 = (TOPIC, 1)
R0 = (RETRY, 0)


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == text]


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kcron")


def test_a_run_is_committed_after_it_finished_and_the_stop_is_graceful(caplog):
    h = Harness({"backup": Plan(seconds=3)})
    h.kafka.add(P0, a_run().encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    stored_at_stop: dict[tuple[str, int], int] = {}

    def stop() -> None:
        stored_at_stop.update(h.kafka.stored)
        h.signal()

    h.kafka.at(1, stop)

    assert h.run() == 0

    assert stored_at_stop == {}
    assert h.started_ids() == ["backup-0"]
    # The run was still going at the signal: the worker waited for it, then committed.
    assert h.kafka.committed == {P0: 1}
    assert h.time.mono >= 3
    assert messages(caplog, "shutting down")[0].__dict__["kcron_fields"]["running"] == 1
    assert messages(caplog, "worker stopped")
    assert h.kafka.subscribed == [TOPIC, RETRY]
    assert h.kafka.closed


def test_assignment_and_revoke_commit_what_finished_and_forget_the_partition(caplog):
    h = Harness({"backup": Plan(seconds=1), "long": Plan(seconds=3)})
    h.kafka.add(P0, a_run(n=1).encode())
    h.kafka.add(P1, a_run("long", n=2).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0, P1, R0]))
    # A rebalance while "long" runs: the revoke waits for it within the grace.
    h.kafka.at(0.5, h.kafka.revoke)
    h.kafka.at(0.6, lambda: h.kafka.assign([P0]))
    h.kafka.at(2, h.signal)

    assert h.run() == 0

    assert h.kafka.committed == {P0: 1, P1: 1}
    assigned = messages(caplog, "partitions assigned")
    assert [r.__dict__["kcron_fields"] for r in assigned] == [
        {"partitions": [0, 1], "retry_partitions": [0]},
        {"partitions": [0], "retry_partitions": []},
    ]
    assert messages(caplog, "partitions revoked")
    assert not messages(
        caplog, "runs still going on a moved partition; the new owner may run them again"
    )


def test_a_run_outlasting_the_grace_on_a_moved_partition_is_not_committed_even_if_it_comes_back(
    caplog,
):
    h = Harness({"long": Plan(seconds=20, outcome=Outcome.FAILED, exit_code=1)}, grace_s=2.0)
    h.kafka.add(P0, a_run("long").encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(1, h.kafka.revoke)
    # The same partition comes back to this worker: a new generation.
    h.kafka.at(3.5, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: h.time.mono > 25, h.signal)

    assert h.run() == 0

    assert messages(
        caplog, "runs still going on a moved partition; the new owner may run them again"
    )
    # Offset 0 was redelivered after the reassignment and ran again; only that one counts.
    assert h.started_ids() == ["long-0", "long-0"]
    assert messages(caplog, "run failed after its partition moved; the new owner runs it again")
    retries = [p for p in h.kafka.produced if p.topic == RETRY]
    assert len(retries) == 1  # from the second run only


def test_lost_partitions_commit_nothing_and_the_late_result_is_dropped(caplog):
    h = Harness({"backup": Plan(seconds=2)})
    h.kafka.add(P0, a_run().encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(1, h.kafka.lose)
    h.kafka.at(4, h.signal)

    assert h.run() == 0

    assert messages(caplog, "partitions lost; their unfinished runs will be redelivered")
    assert h.kafka.store_calls == []
    assert h.kafka.committed == {}
    assert h.worker.executed == 1  # it ran to its end, just not ours to commit


def test_flow_control_pauses_at_prefetch_and_resumes_at_half():
    h = Harness({"backup": Plan(seconds=1)}, concurrency=1, prefetch=4)
    for n in range(10):
        h.kafka.add(P0, a_run(n=n).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    most = 0

    def watch() -> bool:
        nonlocal most
        assert h.pool is not None
        most = max(most, len(h.pool.pending()))
        return h.kafka.stored.get(P0) == 10

    h.kafka.when(watch, h.signal)

    assert h.run() == 0

    assert most == 4  # never more than --prefetch taken and unfinished
    assert h.kafka.pause_calls[0] == [P0]
    assert [P0] in h.kafka.resume_calls
    assert h.kafka.committed == {P0: 10}


def test_a_failed_run_is_committed_once_its_retry_is_delivered():
    h = Harness({"backup": Plan(seconds=1, outcome=Outcome.FAILED, exit_code=1)})
    h.kafka.add(P0, a_run(attempt=1, max_attempts=3).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: bool(h.kafka.produced), h.signal)

    assert h.run() == 0

    [retry] = h.kafka.produced
    assert retry.topic == RETRY
    assert json.loads(retry.value)["attempt"] == 2
    assert h.kafka.committed == {P0: 1}
    assert h.counter("kcron_retries_total", queue=TOPIC, kcron_job="backup") == 1
    assert h.counter("kcron_delivery_failures_total", queue=TOPIC, kcron_job="backup") == 0


def test_a_hand_off_whose_delivery_fails_leaves_the_run_uncommitted_and_counts(caplog):
    h = Harness({"backup": Plan(seconds=1, outcome=Outcome.FAILED, exit_code=1)})
    h.kafka.fail_delivery.add(RETRY)
    h.kafka.add(P0, a_run().encode())
    h.kafka.add(P0, a_run("ok", n=1).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(3, h.signal)

    assert h.run() == 0

    assert [p.topic for p in h.kafka.produced] == [RETRY]
    # "ok" at offset 1 succeeded, but offset 0 is not settled: nothing to commit.
    assert h.kafka.committed == {}
    assert h.counter("kcron_delivery_failures_total", queue=TOPIC, kcron_job="backup") == 1
    assert h.counter("kcron_handoff_failures_total", topic=RETRY) == 1
    assert messages(
        caplog,
        "retry or dead letter not delivered; the run stays uncommitted and is "
        "delivered again after a restart or rebalance",
    )


def test_an_exhausted_run_is_dead_lettered_then_committed():
    h = Harness({"backup": Plan(seconds=1, outcome=Outcome.FAILED, exit_code=3)})
    h.kafka.add(P0, a_run(attempt=3, max_attempts=3).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(2, h.signal)

    assert h.run() == 0

    [dead] = h.kafka.produced
    assert dead.topic == DLQ
    assert json.loads(dead.value)["kind"] == "exhausted"
    assert h.kafka.committed == {P0: 1}
    assert (
        h.counter("kcron_dead_letters_total", queue=TOPIC, kcron_job="backup", kind="exhausted")
        == 1
    )


def test_an_undecodable_message_is_dead_lettered_and_committed(caplog):
    h = Harness()
    h.kafka.add(P0, b"\xffnot a run", record_key=b"k-1")
    h.kafka.add(P0, a_run(n=1).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(3, h.signal)

    assert h.run() == 0

    [dead] = h.kafka.produced
    record = json.loads(dead.value)
    assert (dead.topic, record["kind"], record["id"]) == (DLQ, "undecodable", "k-1")
    assert record["source"] == {"topic": TOPIC, "partition": 0, "offset": 0}
    assert h.kafka.committed == {P0: 2}
    assert h.started_ids() == ["backup-1"]
    assert h.counter("kcron_undecodable_messages_total", queue=TOPIC) == 1
    assert messages(caplog, "undecodable message skipped")


def test_shutdown_with_a_run_held_commits_nothing_past_it():
    h = Harness({"backup": Plan(seconds=1)})
    h.kafka.add(P0, a_run("early", scheduled_for=T0 + timedelta(seconds=30)).encode())
    h.kafka.add(P0, a_run(n=1).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(5, h.signal)

    assert h.run() == 0

    assert h.started_ids() == ["backup-1"]  # offset 1 ran and finished
    assert h.kafka.committed == {}  # offset 0 never started: both are redelivered


def test_a_retry_is_held_until_not_before_without_blocking_the_main_topic():
    h = Harness({"backup": Plan(seconds=1)})
    h.kafka.add(R0, a_run("retried", attempt=2, not_before=T0 + timedelta(seconds=10)).encode())
    h.kafka.add(P0, a_run(n=1).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0, R0]))
    h.kafka.when(lambda: h.kafka.stored.get(R0) == 1, h.signal)

    assert h.run() == 0

    assert h.pool is not None
    first, second = h.pool.started
    assert (label(first.run), label(second.run)) == ("backup-1", "retried-0")
    assert h.kafka.committed == {P0: 1, R0: 1}
    assert 10 <= h.time.mono < 12


def test_commits_follow_offset_order_when_runs_finish_out_of_order():
    h = Harness({"a": Plan(seconds=2), "b": Plan(seconds=1), "c": Plan(seconds=3)})
    for name in ("a", "b", "c"):
        h.kafka.add(P0, a_run(name).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.when(lambda: h.kafka.stored.get(P0) == 3, h.signal)

    assert h.run() == 0

    # b finished first, but a (offset 0) still ran: nothing moved until a did.
    assert h.kafka.store_calls == [(P0, 2), (P0, 3)]


def test_after_the_grace_running_jobs_are_cancelled_and_not_committed(caplog):
    h = Harness({"hang": Plan(seconds=None)}, grace_s=5.0)
    h.kafka.add(P0, a_run("hang").encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(1, h.signal)

    assert h.run() == 0

    assert messages(caplog, "grace period over; killing running jobs, they will be redelivered")
    assert h.kafka.committed == {}
    assert 6 <= h.time.mono < 7


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_in_the_grace_stops_at_once_and_commits_nothing_for_killed_runs(
    caplog, second
):
    h = Harness({"hang": Plan(seconds=None), "quick": Plan(seconds=0.5)}, grace_s=30.0)
    h.kafka.add(P0, a_run("quick").encode())
    h.kafka.add(P1, a_run("hang").encode())
    h.kafka.add(P1, a_run("hang", n=1).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0, P1]))
    h.kafka.at(1, h.signal)
    h.kafka.at(2, lambda: h.signal(second))

    assert h.run() == 128 + second

    assert h.pool is not None and h.pool.killed == 2
    [line] = messages(caplog, "second signal: stopping now; running runs killed, not committed")
    assert line.__dict__["kcron_fields"] == {"signal": second.name, "killed": 2}
    # The killed runs came back (failed by SIGKILL) but are neither retried nor committed.
    assert h.kafka.produced == []
    assert h.kafka.committed == {P0: 1}
    assert h.time.mono < 3  # not the 30 s grace
    assert not messages(caplog, "worker stopped")


def test_both_signals_before_the_loop_looks_stop_at_once():
    h = Harness({"hang": Plan(seconds=None)}, grace_s=30.0)
    h.kafka.add(P0, a_run("hang").encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))

    def twice() -> None:
        h.signal()
        h.signal()

    h.kafka.when(lambda: h.pool is not None and bool(h.pool.running), twice)

    assert h.run() == 128 + signal.SIGTERM
    assert h.kafka.committed == {}


def test_the_signal_handler_only_sets_flags():
    h = Harness()
    h.signal(signal.SIGINT)
    h.signal(signal.SIGTERM)
    assert (h.worker._stop_signal, h.worker._kill_signal) == (signal.SIGINT, signal.SIGTERM)


def test_verdicts_are_only_what_the_worker_can_act_on():
    assert set(Verdict) == {Verdict.SUCCEEDED, Verdict.RETRY, Verdict.DEAD}


def test_a_fatal_producer_error_stops_the_worker(caplog):
    h = Harness()
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(1, lambda: h.worker.on_producer_error("Local: Fatal error: sequence lost", True))

    with pytest.raises(BrokerError, match="fatal Kafka error in the worker's producer"):
        h.run()
    assert h.kafka.closed
    assert h.time.mono < 1.5


def test_a_fatal_consumer_error_stops_the_worker():
    h = Harness()
    h.kafka.errors.append(ClientError("Broker: Fenced instance", fatal=True))

    with pytest.raises(BrokerError, match="worker cannot continue: Broker: Fenced instance"):
        h.run()


def test_a_run_far_ahead_of_the_clock_starts_now_with_a_warning(caplog):
    h = Harness()
    h.kafka.add(P0, a_run(scheduled_for=T0 + timedelta(minutes=2)).encode())
    h.kafka.add(R0, a_run("odd", attempt=2, not_before=T0 + timedelta(days=2)).encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0, R0]))
    h.kafka.at(2, h.signal)

    assert h.run() == 0

    assert sorted(h.started_ids()) == ["backup-0", "odd-0"]
    assert h.kafka.committed == {P0: 1, R0: 1}
    assert messages(
        caplog,
        "run scheduled far ahead of this worker's clock; starting it now "
        "(check clock sync between producer and workers)",
    )
    assert messages(
        caplog,
        "retry's not_before is implausibly far ahead; starting it now "
        "(check clock sync between workers)",
    )


def test_a_second_signal_after_the_final_commit_changes_nothing(caplog):
    h = Harness({"backup": Plan(seconds=1)})
    h.kafka.add(P0, a_run().encode())
    h.kafka.at(0, lambda: h.kafka.assign([P0]))
    h.kafka.at(2, h.signal)
    close = h.kafka.close

    def close_with_a_second_signal() -> None:
        h.signal()
        close()

    h.kafka.close = close_with_a_second_signal  # type: ignore[method-assign]

    assert h.run() == 0
    assert h.kafka.committed == {P0: 1}
    assert messages(caplog, "worker stopped")
