"""Background probes for the metrics: does the broker answer, and (producer) how
are the queues' worker groups doing. Kafka side: the one place that asks
Kafka's admin API about groups.

One daemon thread per process, started only when metrics are served. It
never touches the loop's clients, so a broker that hangs delays the probe,
never a tick or a run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from kcron import kafka
from kcron.lag import QueueReader, Watermarks
from kcron.log import fields
from kcron.metrics import ProcessMetrics, ProducerMetrics
from kcron.settings import Settings

log = logging.getLogger("kcron.metrics")

PROBE_TIMEOUT_S = 5.0
# stop() waits this long for a probe in flight; the thread is a daemon anyway.
STOP_WAIT_S = 1.0


class GroupAdmin:
    """kcron.lag.GroupsPort, and the broker probe, over one AdminClient."""

    def __init__(self, settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        conf: dict[str, Any] = kafka.admin_config(settings)
        # A metadata request for one topic must never create it.
        conf["allow.auto.create.topics"] = False
        self._admin = AdminClient(conf)
        self._timeout = timeout_s

    def answers(self, topic: str) -> bool:
        try:
            self._admin.list_topics(topic=topic, timeout=self._timeout)
        except KafkaException:
            return False
        return True

    def members(self, group: str) -> int:
        future = self._admin.describe_consumer_groups([group], request_timeout=self._timeout)
        return len(future[group].result(timeout=self._timeout).members)

    def committed(self, group: str, topic: str) -> Mapping[int, int]:
        request = [ConsumerGroupTopicPartitions(group)]
        future = self._admin.list_consumer_group_offsets(request, request_timeout=self._timeout)
        found = future[group].result(timeout=self._timeout).topic_partitions or []
        return {tp.partition: tp.offset for tp in found if tp.topic == topic and tp.error is None}

    def watermarks(self, topic: str) -> Watermarks:
        metadata = self._admin.list_topics(topic=topic, timeout=self._timeout)
        partitions = list(metadata.topics[topic].partitions)
        ends: dict[str, dict[int, int]] = {}
        specs = (("low", OffsetSpec.earliest()), ("high", OffsetSpec.latest()))  # type: ignore[no-untyped-call]
        for name, spec in specs:
            asked = {TopicPartition(topic, p): spec for p in partitions}
            futures = self._admin.list_offsets(asked, request_timeout=self._timeout)
            ends[name] = {tp.partition: f.result().offset for tp, f in futures.items()}
        return {p: (ends["low"][p], ends["high"][p]) for p in partitions}


class Probe:
    """Every ``interval_s``: probe the broker; with ``queues``, read their groups."""

    def __init__(
        self,
        settings: Settings,
        metrics: ProcessMetrics,
        queues: Callable[[], Collection[str]] | None = None,
        admin: GroupAdmin | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._queues = queues
        self._admin = admin
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kcron-probe", daemon=True)
        self._reader: QueueReader | None = None
        self._answered: bool | None = None

    def start(self) -> Probe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_WAIT_S)

    def _run(self) -> None:
        try:
            self._admin = self._admin or GroupAdmin(self._settings)
            self._reader = QueueReader(self._admin, self._settings.group)
            while not self._stop.is_set():
                self.once()
                self._stop.wait(self._settings.broker_probe_interval_s)
        except Exception:  # a bug here must not go unnoticed, nor take the process down
            log.exception("broker probe stopped")

    def once(self) -> None:
        assert self._admin is not None and self._reader is not None
        answered = self._admin.answers(self._settings.topic)
        if answered != self._answered:
            self._answered = answered
            if answered:
                log.info("broker answers the probe", extra=fields(topic=self._settings.topic))
            else:
                log.warning(
                    "broker did not answer the probe",
                    extra=fields(bootstrap=self._settings.bootstrap_servers),
                )
        self._metrics.broker_answered(answered, time.time())
        if not answered or self._queues is None or not isinstance(self._metrics, ProducerMetrics):
            return
        for queue in sorted(self._queues()):
            if self._stop.is_set():
                return
            members, behind = self._reader.read(queue)
            self._metrics.queue_seen(queue, members, behind)
