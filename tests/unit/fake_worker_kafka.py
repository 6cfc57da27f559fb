"""A broker, a pool and a clock for driving kcron.worker's real loop in unit tests.

Nothing here sleeps or starts a process: time moves only when the loop waits
(a poll with a timeout), by exactly that timeout. Jobs "run" for the planned
number of seconds of that time. Scripted actions (a rebalance, a signal) fire
inside the poll that reaches them, as Kafka's callbacks do.
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kcron.executor import ExecResult, Outcome
from kcron.message import RunMessage
from kcron.settings import Settings
from kcron.tracing import Tracer
from kcron.worker import Worker
from kcron.worker.courier import ThreadCourier
from kcron.worker.port import ClientError, CommitResult, Listener, PartitionKey, Record
from kcron.worker.runner import Done, Job, Started

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
TOPIC = "jobs"
RETRY = "jobs.retry"
DLQ = "jobs.dlq"
MAX_POLLS = 100_000  # a loop that never ends fails the test instead of hanging it


class FakeTime:
    def __init__(self) -> None:
        self.now = T0
        self.mono = 0.0
        self.listeners: list[Callable[[], None]] = []

    def clock(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.now += timedelta(seconds=seconds)
        for listener in self.listeners:
            listener()


@dataclass
class Produced:
    topic: str
    key: bytes | None
    value: bytes
    on_delivery: Callable[[str | None], None]
    error: str | None = None
    delivered: bool = False
    headers: list[tuple[str, Any]] | None = None  # the trace context, with tracing on
    thread: str = field(default_factory=lambda: threading.current_thread().name)


class FakeKafka:
    """The broker as the worker sees it: its consumer, and (through _ProducerView)
    its producer; ``listener`` is the worker."""

    def __init__(self, time: FakeTime) -> None:
        self.time = time
        self.logs: dict[PartitionKey, list[Record]] = {}
        self.position: dict[PartitionKey, int] = {}
        self.stored: dict[PartitionKey, int] = {}
        self.store_calls: list[tuple[PartitionKey, int]] = []
        self.committed: dict[PartitionKey, int] = {}
        self.assigned: list[PartitionKey] = []
        self.paused: set[PartitionKey] = set()
        self.pause_calls: list[list[PartitionKey]] = []
        self.resume_calls: list[list[PartitionKey]] = []
        self.produced: list[Produced] = []  # retries and dead letters
        self.events: list[Produced] = []  # run events (<topic>.events), kept apart
        self.fail_delivery: set[str] = set()  # topics whose records the broker rejects
        self.fail_produce: set[str] = set()  # topics whose produce() raises, as on a bug
        self.closed = False
        self.polls = 0
        self._actions: list[tuple[Callable[[], bool], Callable[[], None]]] = []
        self.listener: Listener | None = None
        self.subscribed: list[str] = []
        self.errors: list[ClientError] = []  # returned by the next polls, first
        # Run events are produced on the worker's courier thread: a producer poll
        # first waits for what it was given, so reports come in a fixed order.
        self.courier: ThreadCourier | None = None

    # -- test setup ------------------------------------------------------------
    def add(
        self,
        key: PartitionKey,
        value: bytes | None,
        record_key: bytes | None = None,
        headers: Sequence[tuple[str, Any]] | None = None,
    ) -> int:
        log = self.logs.setdefault(key, [])
        log.append(Record(key[0], key[1], len(log), record_key, value, tuple(headers or ())))
        return len(log) - 1

    def when(self, condition: Callable[[], bool], action: Callable[[], None]) -> None:
        """Run ``action`` once, in the first poll that finds ``condition`` true."""
        self._actions.append((condition, action))

    def at(self, seconds: float, action: Callable[[], None]) -> None:
        self.when(lambda: self.time.mono >= seconds, action)

    # -- rebalances, as the client runs them inside poll -------------------------
    def assign(self, keys: Sequence[PartitionKey]) -> None:
        assert self.listener is not None
        self.assigned = list(keys)
        self.paused = set()  # the adapter resumes a new assignment
        for key in keys:
            self.position[key] = self.committed.get(key, 0)
        self.listener.on_assign(list(keys))

    def revoke(self) -> None:
        assert self.listener is not None
        self.listener.on_revoke(list(self.assigned))  # still assigned during the callback
        self.assigned = []
        self.committed.update(self.stored)  # what the revoke stored after its commit
        self.stored = {}

    def lose(self) -> None:
        assert self.listener is not None
        self.listener.on_lost(list(self.assigned))  # still assigned during the callback
        self.assigned = []
        self.stored = {}

    # -- ConsumerPort --------------------------------------------------------------
    def poll(self, timeout_s: float) -> Record | ClientError | None:
        self.polls += 1
        assert self.polls < MAX_POLLS, "the worker's loop did not end"
        for entry in list(self._actions):
            if entry[0]():
                self._actions.remove(entry)
                entry[1]()
        if self.errors:
            return self.errors.pop(0)
        for key in self.assigned:
            log = self.logs.get(key, [])
            if key not in self.paused and self.position[key] < len(log):
                self.position[key] += 1
                return log[self.position[key] - 1]
        self.time.advance(timeout_s)
        return None

    def pause(self, keys: Sequence[PartitionKey]) -> None:
        self.pause_calls.append(list(keys))
        self.paused.update(keys)

    def resume(self, keys: Sequence[PartitionKey]) -> None:
        self.resume_calls.append(list(keys))
        self.paused.difference_update(keys)

    def store_offset(self, key: PartitionKey, position: int) -> None:
        assert key in self.assigned, "offset stored for a partition not assigned"
        self.stored[key] = position
        self.store_calls.append((key, position))

    def commit(self) -> CommitResult:
        self.committed.update(self.stored)
        return CommitResult(dict(self.stored))

    def close(self) -> None:
        # Like the real client leaving the group: the revoke callback runs, then
        # auto-commit commits what is stored.
        if self.assigned:
            self.revoke()
        self.committed.update(self.stored)
        self.closed = True

    # -- ProducerPort -----------------------------------------------------------------
    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_delivery: Callable[[str | None], None],
        headers: list[tuple[str, Any]] | None = None,
    ) -> None:
        if topic in self.fail_produce:
            raise RuntimeError("produce failed")
        kept = self.events if topic.endswith(".events") else self.produced
        kept.append(Produced(topic, key, value, on_delivery, headers=headers))

    def _deliver(self) -> None:
        if self.courier is not None:
            assert self.courier.drain(5.0), "the courier thread is stuck"
        for record in self.produced + self.events:
            if not record.delivered:
                record.delivered = True
                if record.topic in self.fail_delivery:
                    record.error = "Local: Message timed out"
                record.on_delivery(record.error)

    def pending(self) -> int:
        return sum(not r.delivered for r in self.produced + self.events)

    def flush(self, timeout_s: float) -> int:
        self._deliver()
        return 0

    # The producer's poll (the consumer's is poll): serves delivery reports, waits.
    def producer_poll(self, timeout_s: float) -> None:
        self._deliver()
        if timeout_s:
            self.time.advance(timeout_s)


class _ProducerView:
    """The producer side of FakeKafka (poll means something else there)."""

    def __init__(self, kafka: FakeKafka) -> None:
        self._kafka = kafka

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_delivery: Callable[[str | None], None],
        headers: list[tuple[str, Any]] | None = None,
    ) -> None:
        self._kafka.produce(topic, key, value, on_delivery, headers)

    def poll(self, timeout_s: float) -> None:
        self._kafka.producer_poll(timeout_s)

    def flush(self, timeout_s: float) -> int:
        return self._kafka.flush(timeout_s)

    def pending(self) -> int:
        return self._kafka.pending()


class Connector:
    def __init__(self, kafka: FakeKafka) -> None:
        self.kafka = kafka

    def connect(self, topics: Sequence[str], listener: Listener) -> tuple[FakeKafka, _ProducerView]:
        self.kafka.subscribed = list(topics)
        self.kafka.listener = listener
        return self.kafka, _ProducerView(self.kafka)


@dataclass(frozen=True)
class Plan:
    """How a fake job goes: ``seconds`` long (None: until cancelled or killed)."""

    seconds: float | None = 1.0
    outcome: Outcome = Outcome.SUCCEEDED
    exit_code: int | None = 0


def result(outcome: Outcome, code: int | None, seconds: float) -> ExecResult:
    return ExecResult(outcome, code, seconds, 0, False, b"", None if code == 0 else "boom")


@dataclass
class _Running:
    job: Job
    started: datetime
    ends: float | None


@dataclass
class FakePool:
    """The loop's Pool, with jobs that take fake time; ``plans`` by job name."""

    time: FakeTime
    concurrency: int
    sink: Callable[[Done], None]
    plans: dict[str, Plan]
    queued: list[Job] = field(default_factory=list)
    running: list[_Running] = field(default_factory=list)
    returned: list[Job] = field(default_factory=list)  # Done sent, not yet taken
    started: list[Job] = field(default_factory=list)
    killed: int = 0
    cancelling: bool = False

    def __post_init__(self) -> None:
        self.time.listeners.append(self.tick)

    def submit(self, job: Job) -> None:
        self.queued.append(job)
        self._fill()

    def _fill(self) -> None:
        while self.queued and len(self.running) < self.concurrency:
            job = self.queued.pop(0)
            plan = self.plans.get(job.run.job, Plan())
            ends = None if plan.seconds is None else self.time.mono + plan.seconds
            self.running.append(_Running(job, self.time.now, ends))
            self.started.append(job)
            lateness = (self.time.now - job.run.due).total_seconds()
            self.sink(Started(job, self.time.now, round(lateness * 1000)))  # type: ignore[arg-type]

    def _end(self, run: _Running, res: ExecResult) -> None:
        self.running.remove(run)
        self.returned.append(run.job)
        self.sink(Done(run.job, res, run.started, self.time.now))

    def tick(self) -> None:
        for run in list(self.running):
            plan = self.plans.get(run.job.run.job, Plan())
            if self.cancelling:
                self._end(run, result(Outcome.CANCELLED, -15, 0.0))
            elif run.ends is not None and self.time.mono >= run.ends:
                self._end(run, result(plan.outcome, plan.exit_code, plan.seconds or 0.0))
        self._fill()

    def cancel_queued(self, partitions: Collection[PartitionKey] | None = None) -> None:
        self.queued = [
            j for j in self.queued if partitions is not None and j.partition not in partitions
        ]

    def pending(self, partitions: Collection[PartitionKey] | None = None) -> list[Job]:
        jobs = self.queued + [r.job for r in self.running] + self.returned
        return [j for j in jobs if partitions is None or j.partition in partitions]

    def busy(self) -> bool:
        return bool(self.queued or self.running or self.returned)

    def taken(self, job: Job) -> None:
        self.returned.remove(job)

    def waiting(self) -> int:
        return len(self.queued)

    def cancel_running(self) -> None:
        self.cancelling = True

    def kill(self) -> int:
        # Like SIGKILL: the jobs still come back, as failed by a signal.
        self.killed = len(self.running)
        for run in list(self.running):
            self._end(run, result(Outcome.FAILED, -signal.SIGKILL, 0.0))
        return self.killed

    def close(self) -> None:
        pass


LABELS: dict[str, str] = {}  # run id (a UUID) -> "job-n", for readable assertions


def label(run: RunMessage) -> str:
    return LABELS[run.id]


def a_run(job: str = "backup", **changes: Any) -> RunMessage:
    name = f"{job}-{changes.pop('n', 0)}"
    run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, name))
    LABELS[run_id] = name
    values: dict[str, Any] = {
        "id": run_id,
        "job": job,
        "command": "true",
        "scheduled_for": T0,
        "produced_at": T0,
        "max_attempts": 3,
    }
    values.update(changes)
    return RunMessage(**values)


class Harness:
    """A Worker wired to a FakeKafka and a FakePool; ``run()`` until the script stops it."""

    def __init__(
        self, plans: dict[str, Plan] | None = None, tracer: Tracer | None = None, **settings: Any
    ) -> None:
        self.time = FakeTime()
        self.kafka = FakeKafka(self.time)
        self.plans = plans or {}
        options: dict[str, Any] = {"topic": TOPIC, "concurrency": 4, "grace_s": 5.0}
        options.update(settings)
        self.settings = Settings(**options)
        self.pool: FakePool | None = None
        self.kafka.courier = ThreadCourier()  # the worker's real events thread
        self.worker = Worker(
            self.settings,
            clock=self.time.clock,
            connector=Connector(self.kafka),
            pool=self._pool,
            monotonic=self.time.monotonic,
            tracer=tracer,
            courier=self.kafka.courier,
        )

    def _pool(self, sink: Callable[[Done], None]) -> FakePool:
        self.pool = FakePool(self.time, self.settings.concurrency, sink, self.plans)
        return self.pool

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.worker._on_signal(signum, None)

    def run(self) -> int:
        return self.worker.run()

    def started_ids(self) -> list[str]:
        assert self.pool is not None
        return [label(j.run) for j in self.pool.started]

    def counter(self, name: str, **labels: str) -> float:
        value = self.worker.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0
