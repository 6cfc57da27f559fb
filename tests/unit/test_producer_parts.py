"""The producer's Kafka-side parts on fakes: the plain dispatcher (backfill), the
state read, the elector's role logic, and the process host's signal wake-up."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError

from kcron import jobfile, misfire
from kcron.dispatch import Dispatcher
from kcron.election import KafkaElector
from kcron.jobfile import Job
from kcron.metrics import ProducerMetrics as Metrics
from kcron.producer import ProcessHost
from kcron.schedule import Run
from kcron.settings import Settings
from kcron.state import read_state

WHEN = datetime(2028, 1, 1, 10, 0, tzinfo=UTC)


def a_job(name: str = "m") -> Job:
    return jobfile.parse(f"name={name} * * * * * echo {name}\n", "jobs.cron").jobs[0]


# -- plain dispatcher ---------------------------------------------------------


class FakePlainProducer:
    """Queue full on the first produce; reports each delivery on flush, with ``errors``."""

    def __init__(self, errors: list[KafkaError | None]) -> None:
        self.errors = errors
        self.reports: list[Callable[[Any, Any], None]] = []
        self.full_once = True
        self.polls: list[float] = []

    def produce(self, topic: str, *, value: bytes, key: Any, on_delivery: Any) -> None:
        if self.full_once:
            self.full_once = False
            raise BufferError("queue full")
        self.reports.append(on_delivery)

    def poll(self, timeout: float = -1) -> int:
        self.polls.append(timeout)
        return 0

    def flush(self, timeout: float = -1) -> int:
        for report, err in zip(self.reports, self.errors, strict=True):
            report(err, None)
        return 0


def test_a_plain_delivery_failure_is_counted_and_logged_and_a_full_queue_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    fake = FakePlainProducer([None, KafkaError(KafkaError._MSG_TIMED_OUT, "timed out")])
    dispatcher = Dispatcher(fake, "kcron.jobs", metrics)
    with caplog.at_level(logging.ERROR, logger="kcron.producer"):
        dispatcher.send(Run(WHEN, a_job("ok")), WHEN)
        dispatcher.send(Run(WHEN, a_job("lost")), WHEN)
        assert dispatcher.flush() == 0
    assert 0.1 in fake.polls, "a full local queue is waited out, never dropped"
    assert dispatcher.failed == 1
    failures = metrics.registry.get_sample_value
    assert (
        failures("kcron_delivery_failures_total", {"kcron_job": "lost", "queue": "kcron.jobs"}) == 1
    )
    assert (
        failures("kcron_delivery_failures_total", {"kcron_job": "ok", "queue": "kcron.jobs"})
        is None
    )
    (record,) = caplog.records
    assert record.msg == "delivery failed"
    assert record.kcron_fields["job"] == "lost"  # type: ignore[attr-defined]


# -- state read ---------------------------------------------------------------


class StateRecord:
    def __init__(self, key: bytes, value: bytes | None, error: object = None) -> None:
        self._key, self._value, self._error = key, value, error

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> object:
        return self._error


class FakeStateConsumer:
    """Hands out ``batches`` then nothing; each consume takes 0.5 s of fake time."""

    def __init__(self, batches: list[list[StateRecord]], clock: list[float]) -> None:
        self.batches = batches
        self.clock = clock
        self.assigned: list[Any] = []
        self.closed = False

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[StateRecord]:
        self.clock[0] += 0.5
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        self.closed = True


def state(job: str, when: datetime) -> bytes:
    return misfire.encode_state(job, when, when)


def test_the_state_read_keeps_this_producers_latest_records_until_the_topic_is_quiet() -> None:
    later = datetime(2028, 1, 1, 11, 0, tzinfo=UTC)
    clock = [0.0]
    reader = FakeStateConsumer(
        [
            [
                StateRecord(b"jobs/a", state("a", WHEN)),
                StateRecord(b"jobs/b", state("b", WHEN)),
                StateRecord(b"other/a", state("a", later)),  # another producer id
            ],
            [],  # a pause shorter than the quiet time does not end the read
            [
                StateRecord(b"jobs/a", state("a", later)),
                StateRecord(b"jobs/b", None),  # tombstone: b was removed
                StateRecord(
                    b"jobs/c", state("c", later), error=KafkaError(KafkaError._TRANSPORT, "broken")
                ),
            ],
        ],
        clock,
    )
    keep_alive: list[float] = []
    got = read_state(
        reader, "kcron.jobs.state", "jobs", lambda: keep_alive.append(clock[0]), lambda: clock[0]
    )
    assert got == {"a": later}
    assert [(tp.topic, tp.partition, tp.offset) for tp in reader.assigned] == [
        ("kcron.jobs.state", 0, OFFSET_BEGINNING)
    ]
    # polled before every batch, and quiet for 1.5 s after the last record
    assert keep_alive == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert reader.closed


# -- elector ------------------------------------------------------------------


class FakeGroupConsumer:
    def __init__(self) -> None:
        self.callbacks: dict[str, Any] = {}
        self.closed = False
        self.polls = 0

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.topics = topics
        self.callbacks = callbacks

    def poll(self, timeout: float = -1) -> None:
        self.polls += 1

    def close(self) -> None:
        self.closed = True


def test_the_elector_is_active_while_it_owns_the_state_partition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    group = FakeGroupConsumer()
    elector = KafkaElector(Settings(), "kcron-producer.kcron.jobs.jobs", "kcron.jobs.state", group)
    assert group.topics == ["kcron.jobs.state"]
    with caplog.at_level(logging.INFO, logger="kcron.producer"):
        group.callbacks["on_assign"](group, [])
    assert (elector.active, elector.changed) == (False, False)
    assert caplog.messages == ["standing by: another producer with the same producer id is active"]

    group.callbacks["on_assign"](group, ["partition 0"])
    assert (elector.active, elector.changed) == (True, True)
    elector.changed = False
    group.callbacks["on_assign"](group, [])  # an incremental assignment of nothing more
    assert (elector.active, elector.changed) == (True, False)
    group.callbacks["on_lost"](group, ["partition 0"])
    assert (elector.active, elector.changed) == (False, True)
    elector.poll()
    elector.close()
    assert group.polls == 1 and group.closed


# -- process host -------------------------------------------------------------


def test_a_signal_wakes_the_sleeping_loop_and_the_old_handlers_come_back() -> None:
    host = ProcessHost()
    before = signal.getsignal(signal.SIGTERM)
    seen: list[int] = []
    host.install(lambda signum, frame: seen.append(signum), lambda signum, frame: None)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        started = time.monotonic()
        host.wait(10.0)
        assert time.monotonic() - started < 5.0, "the signal did not wake the wait"
        assert seen == [signal.SIGTERM]
    finally:
        host.restore()
    assert signal.getsignal(signal.SIGTERM) is before
