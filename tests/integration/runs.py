"""Helpers for the retry, hostile-input and fault tests: write run messages (or
anything else) straight to a topic, read topics back by consuming them, and
follow runs through the workers' JSON logs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, Producer

from kcron import deadletter, kafka, retry
from kcron.broker import EmbeddedBroker, binary_path, free_port
from kcron.errors import BrokerError
from kcron.message import RunMessage, new_run_id
from kcron.retry import DeadLetter, Source
from kcron.settings import Settings
from tests.support import Kcron


def settings_for(bootstrap: str, topic: str, **changes: Any) -> Settings:
    return Settings(bootstrap_servers=bootstrap, topic=topic, fetch_wait_max_ms=20, **changes)


def create_topics(bootstrap: str, topic: str, partitions: int) -> None:
    """The main, retry and dead-letter topics, as a worker would create them."""
    kafka.ensure_worker_topics(settings_for(bootstrap, topic, partitions=partitions))


def a_run(
    command: str,
    job: str = "job",
    *,
    shell: bool = False,
    attempts: int = 1,
    timeout_s: float | None = None,
    scheduled_for: datetime | None = None,
) -> RunMessage:
    now = datetime.now(UTC)
    return RunMessage(
        id=new_run_id(),
        job=job,
        command=command,
        scheduled_for=scheduled_for or now,
        produced_at=now,
        source="test",
        shell=shell,
        attempt=1,
        max_attempts=attempts,
        timeout_s=timeout_s,
    )


@dataclass
class Sent:
    key: bytes | None
    value: bytes | None
    partition: int = -1
    offset: int = -1
    error: str | None = None


def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> list[Sent]:
    """Write ``(key, value)`` records as they are; return them with partition/offset."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    sent: list[Sent] = []

    def report(item: Sent) -> Callable[[Any, Message], None]:
        def on_delivery(err: Any, msg: Message) -> None:
            if err is not None:
                item.error = str(err)
            else:
                item.partition, item.offset = msg.partition(), msg.offset()

        return on_delivery

    for key, value in records:
        item = Sent(key, value)
        sent.append(item)
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=report(item))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(30) == 0
    failed = [s.error for s in sent if s.error]
    assert not failed, failed[:3]
    return sent


def produce_runs(bootstrap: str, topic: str, runs: Sequence[RunMessage]) -> list[Sent]:
    return produce(bootstrap, topic, ((r.key, r.encode()) for r in runs))


def dead_letters(
    bootstrap: str, topic: str, expect: int, timeout: float = 60, idle_s: float = 1.0
) -> list[DeadLetter]:
    """Read ``topic``.dlq by consuming it until ``expect`` records are there (or time is up)."""
    settings = settings_for(bootstrap, topic)
    dlq = retry.dlq_topic(topic)
    deadline = time.monotonic() + timeout
    letters: list[DeadLetter] = []
    while time.monotonic() < deadline:
        messages = deadletter.read_topic(
            settings, dlq, idle_s, until=lambda got: len(got) >= expect
        )
        letters = [
            retry.read_dead_letter(m.value(), Source(dlq, m.partition() or 0, m.offset() or 0))
            for m in messages
        ]
        if len(letters) >= expect:
            # Anything beyond ``expect`` would be a duplicate: give it a moment to show.
            more = deadletter.read_topic(settings, dlq, idle_s)
            return [
                retry.read_dead_letter(m.value(), Source(dlq, m.partition() or 0, m.offset() or 0))
                for m in more
            ]
        time.sleep(0.5)
    return letters


def ts(record: dict[str, Any]) -> float:
    """A JSON log record's time as epoch seconds."""
    moment = datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return moment.timestamp()


def epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def records(workers: Iterable[Kcron], msg: str) -> list[dict[str, Any]]:
    return [r for w in workers for r in w.messages(msg)]


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:3000]


@contextlib.contextmanager
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of the test's own, to freeze (SIGSTOP): never the shared one. SIGCONT always."""
    try:
        binary_path()
    except BrokerError as exc:  # the dev extra is missing: no process to freeze
        pytest.skip(str(exc))
    with open(tmp_path / "broker.log", "wb") as log, EmbeddedBroker(port=free_port(), log=log) as b:
        try:
            yield b
        finally:
            assert b.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(b.process.pid, signal.SIGCONT)
