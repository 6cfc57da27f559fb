"""The one place that knows librdkafka's configuration and topic admin."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    NewPartitions,
    NewTopic,
)

from kcron.errors import BrokerError, UnsupportedByBroker
from kcron.events import events_topic
from kcron.log import fields
from kcron.retry import dlq_topic, retry_topic
from kcron.settings import Settings

log = logging.getLogger("kcron.kafka")

ADMIN_TIMEOUT_S = 15.0


def _common(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"kcron-{settings.instance}" if settings.instance else "kcron",
        # librdkafka's own lines through kcron's logging: same format, tagged
        # with the process, filtered by --log-level.
        "logger": logging.getLogger("kcron.librdkafka"),
    }
    conf.update(dict(settings.kafka_options))
    return conf


def producer_config(settings: Settings) -> dict[str, Any]:
    conf = _common(settings)
    conf.update(
        {
            # Idempotence: a retried send never writes a run twice.
            "enable.idempotence": True,
            "acks": "all",
            # A cron tick should reach Kafka now, not after a batching delay.
            "linger.ms": 0,
        }
    )
    conf.update(dict(settings.kafka_options))
    return conf


def transactional_producer_config(settings: Settings, transactional_id: str) -> dict[str, Any]:
    """Runs and the dispatch state are written in one transaction per tick.

    A newer producer with the same ``transactional_id`` fences this one:
    its next transaction fails, so two producers never both dispatch.
    """
    conf = producer_config(settings)
    conf.update({"transactional.id": transactional_id, "transaction.timeout.ms": 60000})
    conf.update(dict(settings.kafka_options))
    return conf


def elector_config(settings: Settings, group: str) -> dict[str, Any]:
    """A consumer used only for its group membership: the member that owns
    the single state partition is the active producer, the others stand by."""
    conf = _common(settings)
    conf.update(
        {
            "group.id": group,
            # Incremental rebalancing: a standby joining the group does not take
            # the active producer's partition away, even for a moment.
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(100, settings.session_timeout_ms // 10),
            # The producer loop polls at least every second; a loop stuck for this
            # long gives the role up to a standby. It also bounds how long a join
            # can hang on a broker that drops it.
            "max.poll.interval.ms": max(30000, settings.session_timeout_ms),
            "fetch.wait.max.ms": 500,
        }
    )
    conf.update(dict(settings.kafka_options))
    return conf


def state_reader_config(settings: Settings) -> dict[str, Any]:
    conf = _common(settings)
    conf.update(
        {
            # No group is joined (the reader assigns partitions itself); librdkafka
            # still wants an id, and nothing is ever committed under it.
            "group.id": "kcron-state-reader",
            "enable.auto.commit": False,
            # Only what committed transactions wrote is dispatch state.
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": settings.fetch_wait_max_ms,
        }
    )
    conf.update(dict(settings.kafka_options))
    return conf


def worker_producer_config(settings: Settings) -> dict[str, Any]:
    """The worker's own producer, for retries and dead letters.

    The scheduler's settings (idempotent, acks=all, no linger), never
    transactional: a worker confirms each record by its delivery report before
    it commits the offset of the run it replaces (see kcron/worker/settle.py).
    """
    return producer_config(settings)


def consumer_config(settings: Settings) -> dict[str, Any]:
    conf = _common(settings)
    conf.update(
        {
            "group.id": settings.consumer_group,
            "auto.offset.reset": "earliest",
            # The scheduler writes in transactions: never run a run from an
            # aborted one. (librdkafka's default, stated because it matters.)
            "isolation.level": "read_committed",
            # At-least-once: offsets are stored only after a run finished (and
            # only the contiguous finished prefix), then committed in the background.
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.commit.interval.ms": 1000,
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(100, settings.session_timeout_ms // 10),
            "fetch.wait.max.ms": settings.fetch_wait_max_ms,
            # Keep the local prefetch small: queued runs are not started yet, and a
            # rebalance hands them to another worker anyway.
            "queued.max.messages.kbytes": 1024,
        }
    )
    conf.update(dict(settings.kafka_options))
    return conf


def reader_config(settings: Settings) -> dict[str, Any]:
    """A consumer that only reads with assign(): no group membership, no commits.

    librdkafka insists on a group.id; a unique one that never joins or commits
    leaves no trace on the broker.
    """
    conf = _common(settings)
    conf.update(
        {
            "group.id": f"kcron-reader-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": settings.fetch_wait_max_ms,
        }
    )
    conf.update(dict(settings.kafka_options))
    return conf


def admin_config(settings: Settings) -> dict[str, Any]:
    return _common(settings)


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(admin_config(settings))


def ensure_topic(
    settings: Settings,
    topic: str | None = None,
    partitions: int | None = None,
    config: dict[str, str] | None = None,
) -> int:
    """Create ``topic`` if missing; return its partition count.

    An existing topic with another partition count is used as it is, with a
    warning: changing it is an operator's decision (it moves key placement).
    """
    topic = topic or settings.topic
    wanted = partitions or settings.partitions
    admin = admin_client(settings)
    existing = _partition_count(admin, topic)
    if existing is None:
        future = admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=wanted,
                    replication_factor=settings.replication_factor,
                    config=config or {},
                )
            ],
            request_timeout=ADMIN_TIMEOUT_S,
        )[topic]
        try:
            future.result(timeout=ADMIN_TIMEOUT_S)
            log.info(
                "created topic",
                extra=fields(
                    topic=topic, partitions=wanted, replication_factor=settings.replication_factor
                ),
            )
            return wanted
        except KafkaException as exc:
            err = exc.args[0]
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise BrokerError(f"cannot create topic {topic}: {err}") from None
        existing = _partition_count(admin, topic)
        if existing is None:
            raise BrokerError(f"topic {topic} exists but has no metadata yet")
    if existing != wanted:
        log.warning(
            "topic has a different partition count than configured; using it as it is",
            extra=fields(topic=topic, partitions=existing, configured=wanted),
        )
    return existing


def ensure_worker_topics(settings: Settings) -> None:
    """The main topic, its retry topic (as many partitions), its dead-letter and events topics."""
    partitions = ensure_topic(settings)
    # Same count as the main topic, so the range assignor gives a worker the
    # retry partitions that match its main ones.
    ensure_topic(settings, retry_topic(settings.topic), partitions)
    # One partition: dead letters are few, and one log keeps them in order.
    ensure_topic(settings, dlq_topic(settings.topic), 1)
    # One partition too: two small records per attempt, read in one ordered
    # pass by kcron runs; retention bounds the history (kcron/events.py).
    retention_ms = str(round(settings.events_retention_s * 1000))
    ensure_topic(settings, events_topic(settings.topic), 1, {"retention.ms": retention_ms})


def topic_partitions(settings: Settings, topic: str) -> int | None:
    """The partition count of ``topic``, or None if it does not exist."""
    return _partition_count(admin_client(settings), topic)


_UNSUPPORTED_CODES = (KafkaError._UNSUPPORTED_FEATURE, KafkaError.UNSUPPORTED_VERSION)


def add_partitions(settings: Settings, topic: str, total: int) -> None:
    """Grow ``topic`` to ``total`` partitions and wait until its metadata shows them.

    Kafka never shrinks a topic, and growing it moves key placement: from now
    on a key may hash to another partition than before. Raises
    UnsupportedByBroker when the broker has no CreatePartitions (KIP-195).
    """
    admin = admin_client(settings)
    future = admin.create_partitions(
        [NewPartitions(topic, total)], request_timeout=ADMIN_TIMEOUT_S
    )[topic]
    err: KafkaError | None = None
    try:
        future.result(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        err = exc.args[0]
    # Raised outside the except block: no traceback cycle keeps the admin client alive.
    if err is not None:
        if err.code() in _UNSUPPORTED_CODES:
            raise UnsupportedByBroker(f"the broker has no CreatePartitions ({err.str()})")
        raise BrokerError(f"cannot grow topic {topic} to {total} partitions: {err}")
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while (_partition_count(admin, topic) or 0) < total:
        if time.monotonic() > deadline:
            raise BrokerError(f"topic {topic} does not show {total} partitions in its metadata")
        time.sleep(0.1)
    log.info("added partitions", extra=fields(topic=topic, partitions=total))


def _partition_count(admin: AdminClient, topic: str) -> int | None:
    try:
        # All topics, not list_topics(topic=...): a per-topic metadata request
        # can auto-create the topic on brokers with auto.create.topics.enable.
        metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerError(f"Kafka not reachable: {exc.args[0]}") from None
    info = metadata.topics.get(topic)
    if info is None or (
        info.error is not None
        and info.error.code()
        in (
            KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError._UNKNOWN_TOPIC,
        )
    ):
        return None
    if info.error is not None:
        raise BrokerError(f"topic {topic}: {info.error}")
    return len(info.partitions)


def wait_for_broker(settings: Settings, timeout_s: float = 30.0) -> None:
    """Raise BrokerError with the bootstrap address if no broker answers in time."""
    admin = admin_client(settings)
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerError(
            f"no Kafka broker answered at {settings.bootstrap_servers} within {timeout_s:g}s "
            f"({exc.args[0]}); start one with 'kcron broker' or set KCRON_BOOTSTRAP_SERVERS"
        ) from None


class Producing(Protocol):
    """What produce_patiently needs of a producer (confluent_kafka's, or a fake)."""

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes,
        on_delivery: Callable[..., None],
        headers: list[tuple[str, str | bytes | None]] | None = ...,
    ) -> None: ...

    def poll(self, timeout: float) -> int: ...


def produce_patiently(
    producer: Producing,
    topic: str,
    key: bytes | None,
    value: bytes,
    on_delivery: Callable[..., None],
    headers: list[tuple[str, str | bytes | None]] | None = None,
    *,
    serve: bool = True,
) -> None:
    """produce(), waiting out a full local queue (broker slow or down): never drop.

    ``headers``: the run's trace context (kcron/tracing.py), None when tracing is off.
    ``serve=False`` leaves delivery reports to the caller's own regular poll:
    each poll releases and retakes the GIL, which costs a loop thread among
    busy pool threads about 0.2 ms (the worker polls once per turn anyway).
    """
    while True:
        try:
            if headers is None:  # tracing off: the call as it always was
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            else:
                producer.produce(
                    topic, key=key, value=value, on_delivery=on_delivery, headers=headers
                )
        except BufferError:
            producer.poll(0.1)
        else:
            if serve:
                producer.poll(0)  # serve delivery reports of earlier messages
            return


class Reading(Protocol):
    """What read_until_quiet needs of an assigned consumer."""

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Message]: ...


def read_until_quiet(
    reader: Reading,
    quiet_s: float,
    *,
    first_wait_s: float | None = None,
    batch: int = 500,
    keep_alive: Callable[[], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> Iterator[list[Message]]:
    """Batches of messages until nothing has arrived for ``quiet_s``.

    The end of a topic is found by reading, not from its high watermark,
    which some Kafka-compatible brokers report wrongly. ``first_wait_s``
    (default ``quiet_s``) bounds the wait for the first message, as
    connecting and the first fetch take a moment. ``keep_alive`` runs before
    every batch, for a caller that must keep polling something else. A fatal
    error raises BrokerError; others are librdkafka's to retry.
    """
    quiet_since = monotonic() + (quiet_s if first_wait_s is None else first_wait_s) - quiet_s
    while monotonic() - quiet_since < quiet_s:
        if keep_alive is not None:
            keep_alive()
        good = []
        for msg in reader.consume(batch, 0.1):
            err = msg.error()
            if err is None:
                good.append(msg)
            elif err.fatal():
                raise BrokerError(f"cannot read {msg.topic()}: {err}")
        if good:
            quiet_since = monotonic()
            yield good
