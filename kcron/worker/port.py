"""The worker's narrow view of Kafka: what the loop needs, nothing more.

Only kcron/worker/confluent.py implements these over confluent_kafka; the unit
tests drive the same loop through a fake. Partitions are ``(topic, number)``
pairs, offsets plain ints, errors one readable line: no client types leak.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

PartitionKey = tuple[str, int]
# Kafka record headers: a consumed record's, a produced one's (confluent_kafka's types).
RecordHeaders = tuple[tuple[str, str | bytes | None], ...]
Headers = list[tuple[str, str | bytes | None]]
# The broker's answer for one produced record: None when it has it, else why not.
DeliveryCallback = Callable[[str | None], None]


@dataclass(frozen=True)
class Record:
    """One message read from an assigned partition."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: RecordHeaders = ()  # read for the trace context (kcron/tracing.py)

    @property
    def where(self) -> PartitionKey:
        return (self.topic, self.partition)


@dataclass(frozen=True)
class ClientError:
    """An error event from the consumer (end of partition events never arrive here)."""

    text: str
    fatal: bool


@dataclass(frozen=True)
class CommitResult:
    """What a synchronous commit wrote; ``error`` None also when there was nothing to commit."""

    offsets: Mapping[PartitionKey, int]
    error: str | None = None


class Listener(Protocol):
    """The loop's callbacks, all served on the thread that polls."""

    def on_assign(self, keys: Sequence[PartitionKey]) -> None: ...

    def on_revoke(self, keys: Sequence[PartitionKey]) -> None: ...

    def on_lost(self, keys: Sequence[PartitionKey]) -> None: ...

    def on_commit(self, result: CommitResult) -> None: ...

    def on_producer_error(self, text: str, fatal: bool) -> None: ...


class ConsumerPort(Protocol):
    def poll(self, timeout_s: float) -> Record | ClientError | None: ...

    def pause(self, keys: Sequence[PartitionKey]) -> None: ...

    def resume(self, keys: Sequence[PartitionKey]) -> None: ...

    def store_offset(self, key: PartitionKey, position: int) -> None:
        """Mark ``position`` (the next offset to read) for the background commit."""

    def commit(self) -> CommitResult: ...

    def close(self) -> None: ...


class ProducerPort(Protocol):
    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_delivery: DeliveryCallback,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record, waiting while the local queue is full (never drops).

        A record the client refuses outright reports its error through
        ``on_delivery`` like a failed delivery.
        """

    def poll(self, timeout_s: float) -> None:
        """Serve delivery reports, waiting up to ``timeout_s`` for one."""

    def flush(self, timeout_s: float) -> int:
        """Wait for every queued record; return how many are still unconfirmed."""

    def pending(self) -> int: ...


class Connector(Protocol):
    def connect(
        self, topics: Sequence[str], listener: Listener
    ) -> tuple[ConsumerPort, ProducerPort]:
        """Wait for the broker, make the topics, subscribe to ``topics``."""
