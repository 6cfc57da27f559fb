"""Fakes behind the producer's interfaces (kcron.producer.ProducerKafka and Host,
kcron.dispatch.TxnProducer): the service runs on a virtual clock, no broker."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from kcron.dispatch import TransactionalDispatcher
from kcron.message import RunMessage, decode
from kcron.metrics import ProducerMetrics as Metrics
from kcron.producer import SignalHandler, TxnDispatcher
from kcron.schedule import Run

Action = str | Callable[[], None]


class FakeHost:
    """Virtual time: waiting advances the clock at once."""

    def __init__(self, now: datetime) -> None:
        self.clock = now
        self.mono = 1000.0
        self.waits: list[float] = []
        self.exited: int | None = None
        self.installed = False
        self.restored = False
        self.on_stop: SignalHandler = lambda signum, frame: None
        self.on_hup: SignalHandler = lambda signum, frame: None
        self.during_wait: Callable[[], None] = lambda: None

    def now(self) -> datetime:
        return self.clock

    def monotonic(self) -> float:
        return self.mono

    def install(self, on_stop: SignalHandler, on_hup: SignalHandler) -> None:
        self.installed = True
        self.on_stop, self.on_hup = on_stop, on_hup

    def restore(self) -> None:
        self.restored = True

    def wait(self, timeout: float) -> None:
        self.waits.append(timeout)
        self.clock += timedelta(seconds=timeout)
        self.mono += timeout
        self.during_wait()

    def exit_now(self, code: int) -> None:
        self.exited = code


class FakeElector:
    """Runs ``script[n]`` on the n-th poll: "assign", "revoke" or any callable."""

    def __init__(self, script: dict[int, Action]) -> None:
        self.script = script
        self.close_hangs: threading.Event | None = None  # close() waits for it when set
        self.closing = False
        self.active = False
        self.changed = False
        self.polls = 0
        self.closed = False

    def poll(self) -> None:
        self.polls += 1
        assert self.polls < 10_000, "the loop never stopped"
        action = self.script.get(self.polls)
        if action == "assign":
            self.active, self.changed = True, True
        elif action == "revoke":
            self.active, self.changed = False, True
        elif callable(action):
            action()

    def close(self) -> None:
        self.closing = True
        if self.close_hangs is not None:
            assert self.close_hangs.wait(10), "close() was never released"
        self.closed = True


class RecordingDispatcher:
    """A TxnDispatcher that records what it was asked to commit."""

    def __init__(self) -> None:
        self.dispatched: list[Run] = []
        self.closed = False

    def dispatch(
        self, runs: Sequence[Run], now: datetime, interrupted: Callable[[], bool]
    ) -> list[Any]:
        assert not self.closed
        self.dispatched.extend(runs)
        return list(runs)

    def close(self, interrupted: Callable[[], bool]) -> None:
        self.closed = True


@dataclass
class FakeKafka:
    """ProducerKafka: one elector, a dispatcher per take-over, a scripted state."""

    elector_: FakeElector
    state: dict[str, datetime] = field(default_factory=dict)
    state_batches: int = 3
    make_dispatcher: Callable[[Metrics, Callable[[float], None]], TxnDispatcher] | None = None
    dispatchers: list[TxnDispatcher] = field(default_factory=list)
    polls_in_read_state: list[int] = field(default_factory=list)
    metrics: Metrics | None = None
    queues_made: list[list[str]] = field(default_factory=list)  # one entry per call
    queue_failures: list[Exception] = field(default_factory=list)  # raised by the next calls

    def prepare(self) -> None:
        pass

    def ensure_queues(self, queues: Collection[str]) -> None:
        if self.queue_failures:
            raise self.queue_failures.pop(0)
        self.queues_made.append(list(queues))

    def elector(self) -> FakeElector:
        return self.elector_

    def dispatcher(self, metrics: Metrics, sleep: Callable[[float], None]) -> TxnDispatcher:
        self.metrics = metrics
        made = self.make_dispatcher(metrics, sleep) if self.make_dispatcher else None
        dispatcher = made or RecordingDispatcher()
        self.dispatchers.append(dispatcher)
        return dispatcher

    def read_state(self, keep_alive: Callable[[], None]) -> dict[str, datetime]:
        for _ in range(self.state_batches):  # a big state: several batches
            keep_alive()
            self.polls_in_read_state.append(self.elector_.polls)
        return dict(self.state)


@dataclass
class FakeRecord:
    topic_: str
    key_: bytes
    offset_: int

    def topic(self) -> str:
        return self.topic_

    def key(self) -> bytes:
        return self.key_

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.offset_


def kafka_error(code: int, *, fatal: bool = False, abort: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, "scripted", fatal=fatal, txn_requires_abort=abort))


class FakeTxnProducer:
    """A transactional producer: records calls, commits into ``committed``.

    ``fail_commits`` are raised by the next commits, one each; ``during_produce``
    runs on every produce (to deliver a signal mid-transaction).
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.open: list[tuple[str, bytes, bytes]] = []
        self.headers: list[Any] = []  # each produce's headers (None: none given)
        self.committed: list[list[tuple[str, bytes, bytes]]] = []
        self.aborted = 0
        self.fail_commits: list[KafkaException] = []
        self.outstanding = 0
        self.during_produce: Callable[[], None] = lambda: None
        self.during_flush: Callable[[], None] = lambda: None
        self._reports: list[tuple[Any, FakeRecord]] = []
        self._offset = 0

    def init_transactions(self, timeout: float = -1) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        self.calls.append("begin")
        self.open, self._reports = [], []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: Any = None,
        on_delivery: Any = None,
        headers: Any = None,
    ) -> None:
        self.calls.append(f"produce {topic}")
        self.headers.append(headers)
        raw_key = key.encode() if isinstance(key, str) else key
        self.open.append((topic, raw_key, value or b""))
        if on_delivery is not None:
            self._reports.append((on_delivery, FakeRecord(topic, raw_key, self._offset)))
            self._offset += 1
        self.during_produce()

    def commit_transaction(self, timeout: float = -1) -> None:
        self.calls.append("commit")
        if self.fail_commits:
            raise self.fail_commits.pop(0)
        self.committed.append(self.open)
        for report, record in self._reports:
            report(None, record)
        self.open = []

    def abort_transaction(self, timeout: float = -1) -> None:
        self.calls.append("abort")
        self.aborted += 1
        self.open = []

    def flush(self, timeout: float = -1) -> int:
        self.calls.append("flush")
        self.during_flush()
        return self.outstanding

    def poll(self, timeout: float = -1) -> int:
        return 0


def transactional(
    txn: FakeTxnProducer, sleeps: list[float] | None = None
) -> Callable[[Metrics, Callable[[float], None]], TxnDispatcher]:
    """A FakeKafka.make_dispatcher building the real TransactionalDispatcher on ``txn``."""

    def make(metrics: Metrics, sleep: Callable[[float], None]) -> TxnDispatcher:
        def recorded(seconds: float) -> None:
            if sleeps is not None:
                sleeps.append(seconds)
            sleep(seconds)

        return TransactionalDispatcher(
            txn, "kcron.jobs", "jobs", "kcron.jobs.state", metrics, recorded
        )

    return make


class PlainRecorder:
    """A plain producer that records each message with its topic and key."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, RunMessage]] = []

    def produce(self, topic: str, *, key: Any, value: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, key, decode(value)))

    def poll(self, timeout: float = -1) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        return 0
