"""The one place that knows librdkafka's configuration and topic admin."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from kcron.errors import BrokerError
from kcron.log import fields
from kcron.settings import Settings

log = logging.getLogger("kcron.kafka")

ADMIN_TIMEOUT_S = 15.0


def _common(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"kcron-{settings.instance}" if settings.instance else "kcron",
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


def consumer_config(settings: Settings) -> dict[str, Any]:
    conf = _common(settings)
    conf.update(
        {
            "group.id": settings.group,
            "auto.offset.reset": "earliest",
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


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(_common(settings))


def ensure_topic(
    settings: Settings, topic: str | None = None, partitions: int | None = None
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
                    topic, num_partitions=wanted, replication_factor=settings.replication_factor
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
