"""Reading the producer's dispatch state from the compacted ``<topic>.state`` topic.

Each committed dispatch transaction also writes, per job, the last
``scheduled_for`` it dispatched (kcron/misfire.py encodes it). A producer
taking over reads it back to resume where its predecessor stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from kcron import kafka, misfire
from kcron.settings import Settings

# How long the state topic must stay quiet before its end is taken as reached.
STATE_QUIET_S = 1.5
STATE_BATCH = 1000  # state records read per call


class StateConsumer(Protocol):
    """The part of a confluent_kafka Consumer the state read uses."""

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Message]: ...

    def close(self) -> None: ...


def state_topic(settings: Settings) -> str:
    return f"{settings.topic}.state"


def open_reader(settings: Settings) -> StateConsumer:
    return Consumer(kafka.state_reader_config(settings))


def read_state(
    reader: StateConsumer,
    topic: str,
    producer_id: str,
    keep_alive: Callable[[], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> dict[str, datetime]:
    """Last dispatched ``scheduled_for`` per job of this producer id; closes ``reader``.

    Reads the compacted state topic from the start until it has been quiet for
    a moment. High watermarks would say where the end is, but some
    Kafka-compatible brokers report them wrongly, and a state read that stops
    early would dispatch runs twice. ``keep_alive`` is called between batches:
    a big state takes seconds to read, and the elector must keep polling.
    """
    state: dict[str, datetime] = {}
    try:
        reader.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        for batch in kafka.read_until_quiet(
            reader, STATE_QUIET_S, batch=STATE_BATCH, keep_alive=keep_alive, monotonic=monotonic
        ):
            apply_records(state, batch, producer_id)
    finally:
        reader.close()
    return state


def apply_records(state: dict[str, datetime], records: Iterable[Message], producer_id: str) -> None:
    """Fold state records into ``state``: later records win, a tombstone forgets the job."""
    prefix = f"{producer_id}/".encode()
    for record in records:
        key = record.key() or b""
        if not key.startswith(prefix):
            continue
        decoded = misfire.decode_state(record.value())
        job_name = key[len(prefix) :].decode(errors="replace")
        if decoded is None:
            state.pop(job_name, None)
        else:
            state[job_name] = decoded[1]
