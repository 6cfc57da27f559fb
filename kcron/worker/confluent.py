"""The worker's Kafka port over confluent_kafka: the one module here that imports it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from kcron import kafka
from kcron.settings import Settings
from kcron.worker.port import (
    ClientError,
    CommitResult,
    DeliveryCallback,
    Headers,
    Listener,
    PartitionKey,
    Record,
)


def _tps(keys: Sequence[PartitionKey]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in keys]


def _keys(partitions: Sequence[TopicPartition]) -> list[PartitionKey]:
    return [(tp.topic, tp.partition) for tp in partitions]


def _committed(partitions: Sequence[TopicPartition]) -> dict[PartitionKey, int]:
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in partitions
        if tp.error is None and tp.offset >= 0
    }


class ConfluentConsumer:
    def __init__(self, settings: Settings, listener: Listener) -> None:
        self._listener = listener
        config = kafka.consumer_config(settings)
        config["on_commit"] = self._on_commit
        self._consumer = Consumer(config)

    def subscribe(self, topics: Sequence[str]) -> None:
        self._consumer.subscribe(
            list(topics),
            on_assign=self._on_assign,
            on_revoke=lambda _c, parts: self._listener.on_revoke(_keys(parts)),
            on_lost=lambda _c, parts: self._listener.on_lost(_keys(parts)),
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # librdkafka keeps a partition paused across a rebalance, also when it
        # comes back to this worker: one paused by flow control before would
        # never be fetched again. Assign here (else the client does it after
        # this callback) so that resume applies to the new assignment.
        consumer.assign(partitions)
        if partitions:
            consumer.resume(partitions)
        self._listener.on_assign(_keys(partitions))

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            if err.code() != KafkaError._NO_OFFSET:
                self._listener.on_commit(CommitResult({}, str(err)))
            return
        self._listener.on_commit(CommitResult(_committed(partitions)))

    def poll(self, timeout_s: float) -> Record | ClientError | None:
        msg = self._consumer.poll(timeout_s)
        if msg is None:
            return None
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return None
            return ClientError(str(err), bool(err.fatal()))
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            return None  # only error events lack these, and those returned above
        headers = msg.headers()  # a list of (name, value), None without headers
        found = tuple(headers) if isinstance(headers, list) else ()
        return Record(topic, partition, offset, msg.key(), msg.value(), found)

    def pause(self, keys: Sequence[PartitionKey]) -> None:
        self._consumer.pause(_tps(keys))

    def resume(self, keys: Sequence[PartitionKey]) -> None:
        self._consumer.resume(_tps(keys))

    def store_offset(self, key: PartitionKey, position: int) -> None:
        self._consumer.store_offsets(offsets=[TopicPartition(key[0], key[1], position)])

    def commit(self) -> CommitResult:
        try:
            committed = self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                return CommitResult({}, str(exc.args[0]))
            return CommitResult({})
        return CommitResult(_committed(committed or []))

    def close(self) -> None:
        self._consumer.close()


class ConfluentProducer:
    def __init__(self, settings: Settings, listener: Listener) -> None:
        config: dict[str, Any] = kafka.worker_producer_config(settings)
        config["error_cb"] = self._on_error
        self._listener = listener
        self._producer = Producer(config)

    def _on_error(self, err: KafkaError) -> None:
        self._listener.on_producer_error(str(err), bool(err.fatal()))

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_delivery: DeliveryCallback,
        headers: Headers | None = None,
    ) -> None:
        def report(err: KafkaError | None, _msg: Message) -> None:
            on_delivery(None if err is None else str(err))

        try:
            # The loop polls the producer at every turn: its reports are served there.
            kafka.produce_patiently(self._producer, topic, key, value, report, headers, serve=False)
        except KafkaException as exc:  # refused before sending, e.g. too large
            on_delivery(str(exc.args[0]))

    def poll(self, timeout_s: float) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float) -> int:
        return int(self._producer.flush(timeout_s))

    def pending(self) -> int:
        return len(self._producer)


class ConfluentConnector:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def connect(
        self, topics: Sequence[str], listener: Listener
    ) -> tuple[ConfluentConsumer, ConfluentProducer]:
        settings = self._settings
        kafka.wait_for_broker(settings)
        kafka.ensure_worker_topics(settings)
        producer = ConfluentProducer(settings, listener)
        consumer = ConfluentConsumer(settings, listener)
        consumer.subscribe(topics)
        return consumer, producer
