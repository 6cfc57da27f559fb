"""Reading the run events back, and ``kcron trigger``'s send: the Kafka side of
kcron runs / jobs / trigger (kcron/cli_runs.py imports it only when a command runs).

Reading assigns the partitions itself (no consumer group, nothing committed,
as ``kcron dlq list``) and reads each events topic once, to its end, found by
reading until quiet (kcron.kafka.read_until_quiet), never from the high
watermark. With ``since`` it starts at the first offset at or after that time
(offsets_for_times, where the broker has it), so a large history is not read
from its beginning; each record is decoded once, in that one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from kcron import dispatch, events, kafka
from kcron.errors import BrokerError
from kcron.jobfile import Job
from kcron.message import RunMessage
from kcron.metrics import ProducerMetrics
from kcron.schedule import Run
from kcron.settings import Settings

BATCH = 5000  # records per consume(): large batches keep 100k events to a few calls
LOOKUP_TIMEOUT_S = 10.0


def _start_offsets(
    consumer: Consumer, topic: str, partitions: int, since: datetime | None
) -> list[TopicPartition]:
    """Where to start each partition: the beginning, or the first record at ``since``."""
    begin = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
    if since is None:
        return begin
    stamp = round(since.timestamp() * 1000)
    wanted = [TopicPartition(topic, p, stamp) for p in range(partitions)]
    try:
        found = consumer.offsets_for_times(wanted, timeout=LOOKUP_TIMEOUT_S)
    except KafkaException:
        return begin  # no ListOffsets by time here: read it all, the filter still applies
    starts = []
    for tp, fallback in zip(found, begin, strict=True):
        if tp.error is not None:
            starts.append(fallback)
        elif tp.offset >= 0:
            starts.append(TopicPartition(topic, tp.partition, tp.offset))
        # offset -1: nothing at or after ``since`` in this partition; skip it
    return starts


def read_events(
    settings: Settings,
    queues: Sequence[str],
    since: datetime | None = None,
    idle_s: float | None = None,
) -> list[dict[str, Any]]:
    """Every readable event of ``queues``' events topics (from ``since``), in log order."""
    found: list[dict[str, Any]] = []
    quiet = settings.read_idle_s if idle_s is None else idle_s
    for queue in queues:
        topic = events.events_topic(queue)
        partitions = kafka.topic_partitions(settings, topic)
        if not partitions:
            continue
        consumer = Consumer(kafka.reader_config(settings))
        try:
            starts = _start_offsets(consumer, topic, partitions, since)
            if not starts:
                continue
            consumer.assign(starts)
            for batch in kafka.read_until_quiet(
                consumer, quiet, first_wait_s=2 * quiet, batch=BATCH
            ):
                for msg in batch:
                    event = events.decode(msg.value())
                    if event is not None:
                        found.append(event)
        finally:
            consumer.close()
    return found


def trigger(settings: Settings, job: Job, clock: dispatch.Clock = dispatch.utc_now) -> RunMessage:
    """Send one run of ``job``, due now, to its queue, marked manual.

    Built and sent as backfill sends its runs (dispatch.Dispatcher), so the
    run takes the normal path: its queue, attempts and timeout.
    """
    kafka.wait_for_broker(settings)
    kafka.ensure_topic(settings, job.queue_or(settings.topic))
    sender = dispatch.Dispatcher.connect(settings, ProducerMetrics(settings.topic))
    now = clock().astimezone(UTC)
    msg = sender.send(Run(now, job), now, trigger="manual")
    left = sender.flush()
    if left or sender.failed:
        raise BrokerError(f"run {msg.id} of job {job.name} was not delivered")
    return msg
