"""``kcron dlq``: list the dead-letter topic, send a dead run back for another go.

Reading uses assign(), never a consumer group, so listing commits nothing and
two operators can list at once. The end of the topic is found by reading until
nothing has arrived for ``idle`` seconds, not from the high watermark, which
some Kafka-compatible dev brokers report wrongly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from kcron import kafka, retry, signing
from kcron.errors import BrokerError, DeadLetterNotFound, NothingToRequeue
from kcron.message import RunMessage
from kcron.retry import DeadLetter, Source, read_dead_letter
from kcron.settings import Settings
from kcron.telemetry import start_tracing

DEFAULT_IDLE_S = 2.0
DLQ_SUFFIX = retry.dlq_topic("")
DELIVERY_TIMEOUT_S = 30.0


def read_topic(
    settings: Settings,
    topic: str,
    idle_s: float = DEFAULT_IDLE_S,
    until: Callable[[list[Message]], bool] | None = None,
) -> list[Message]:
    """Every message of ``topic`` from the beginning, in partition order.

    Stops once nothing has arrived for ``idle_s`` (twice that before the first
    message: connecting and the first fetch take a moment), or as soon as
    ``until(messages)`` is true. A missing topic reads as empty.
    """
    partitions = kafka.topic_partitions(settings, topic)
    if not partitions:
        return []
    consumer = Consumer(kafka.reader_config(settings))
    messages: list[Message] = []
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        for batch in kafka.read_until_quiet(consumer, idle_s, first_wait_s=2 * idle_s):
            messages.extend(batch)
            if until is not None and until(messages):
                break
    finally:
        consumer.close()
    return messages


def read_dead_letters(
    settings: Settings, idle_s: float = DEFAULT_IDLE_S, queues: Sequence[str] | None = None
) -> list[DeadLetter]:
    """The dead letters of ``queues`` (default: the --topic one), oldest first.

    Each letter's ``source`` is where it sits, ``<queue>.dlq``: queue_of() reads it back.
    """
    letters: list[DeadLetter] = []
    for queue in queues or [settings.topic]:
        topic = retry.dlq_topic(queue)
        for msg in read_topic(settings, topic, idle_s):
            source = Source(topic, msg.partition() or 0, msg.offset() or 0)
            letters.append(read_dead_letter(msg.value(), source))
    # Stable: within one queue the log's order stands; across queues, by time.
    if queues is not None and len(queues) > 1:
        letters.sort(key=lambda letter: letter.dead_at)
    return letters


def queue_of(letter: DeadLetter) -> str | None:
    """The queue whose dead-letter topic held ``letter``."""
    if letter.source is None or not letter.source.topic.endswith(DLQ_SUFFIX):
        return None
    return letter.source.topic[: -len(DLQ_SUFFIX)]


def find(letters: list[DeadLetter], run_id: str) -> DeadLetter | None:
    """The latest dead letter with this id (a requeued run may have died again)."""
    wanted = run_id.strip().lower()
    matches = [letter for letter in letters if (letter.id or "").lower() == wanted]
    return matches[-1] if matches else None


def requeue(
    settings: Settings,
    run_id: str,
    idle_s: float = DEFAULT_IDLE_S,
    queues: Sequence[str] | None = None,
) -> tuple[RunMessage, DeadLetter, str]:
    """Send the dead run ``run_id`` back to its queue as a fresh first attempt.

    Its queue is the one its message names, else the one whose dead-letter
    topic held it. Returns the new message, the letter and that queue.
    """
    searched = list(queues or [settings.topic])
    letters = read_dead_letters(settings, idle_s, searched)
    letter = find(letters, run_id)
    if letter is None:
        where = ", ".join(retry.dlq_topic(q) for q in searched)
        raise DeadLetterNotFound(
            f"no dead letter with id {run_id} in {where} ({len(letters)} dead letters read)"
        )
    run = letter.run()
    if run is None:
        src = letter.record.get("source") or {}
        raise NothingToRequeue(
            f"dead letter {run_id} is not a run ({letter.kind}: {letter.reason}; from "
            f"{src.get('topic')} partition {src.get('partition')} offset {src.get('offset')}): "
            "there is nothing to requeue; its raw bytes are in raw_b64 (kcron dlq list --json)"
        )
    target = run.queue or queue_of(letter) or settings.topic
    if kafka.topic_partitions(settings, target) is None:
        raise BrokerError(f"run {run.id} belongs to queue {target}, and that topic does not exist")
    fresh = retry.requeued(run, datetime.now(UTC))
    _send(settings, target, fresh)
    return fresh, letter, target


def _send(settings: Settings, topic: str, fresh: RunMessage) -> None:
    producer = Producer(kafka.worker_producer_config(settings))
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    # Re-signed: a requeue is a new message, written by whoever holds the key.
    value = signing.encode_run(fresh, signing.load_optional(settings.signing_key_file))
    tracer = start_tracing(settings.tracing, "kcron-producer")  # a new trace, as a dispatch
    trace = tracer.dispatch([fresh])
    headers = trace.headers(fresh.id)
    if headers is None:  # tracing off: the call as it always was
        producer.produce(topic, key=fresh.key, value=value, on_delivery=on_delivery)
    else:
        producer.produce(
            topic, key=fresh.key, value=value, on_delivery=on_delivery, headers=headers
        )
    left = producer.flush(DELIVERY_TIMEOUT_S)
    trace.end(errors[0] if errors else "no delivery report in time" if left else None)
    tracer.shutdown()
    if left or errors:
        raise BrokerError(
            f"run {fresh.id} was not requeued to {topic}: "
            + (errors[0] if errors else "no delivery report in time")
        )


# -- the click group -----------------------------------------------------------------


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table_rows(letters: list[DeadLetter], with_queue: bool = False) -> list[tuple[str, ...]]:
    """The table of ``kcron dlq list``; ``with_queue`` adds a QUEUE column (several queues)."""
    queue_head: tuple[str, ...] = ("QUEUE",) if with_queue else ()
    rows: list[tuple[str, ...]] = [
        ("DEAD AT", *queue_head, "JOB", "RUN ID", "TRIES", "EXIT", "REASON", "LAST OUTPUT")
    ]
    for letter in letters:
        queue: tuple[str, ...] = (_cut(queue_of(letter) or "-", 32),) if with_queue else ()
        rows.append(
            (
                letter.dead_at or "-",
                *queue,
                _cut(letter.job or "-", 24),
                letter.id or "-",
                "-" if letter.attempts is None else str(letter.attempts),
                "-" if letter.exit_code is None else str(letter.exit_code),
                _cut(letter.reason or letter.kind or "-", 60),
                _cut(letter.last_line, 40) or "-",
            )
        )
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def record_for_json(letter: DeadLetter) -> dict[str, Any]:
    doc = dict(letter.record)
    if letter.source is not None:
        doc["dlq_offset"] = letter.source.offset
    doc["queue"] = queue_of(letter)
    return doc
