"""Which of the producers with the same producer id is the active one.

Every producer joins a consumer group on the one-partition state topic: the
member that owns the partition is the active producer, the others stand by
and take over when it leaves the group (or stops polling).
"""

from __future__ import annotations

import logging
from typing import Protocol

from confluent_kafka import Consumer, TopicPartition

from kcron import kafka
from kcron.settings import Settings

log = logging.getLogger("kcron.producer")


class Elector(Protocol):
    """What the producer loop needs from the election.

    ``changed`` is set by ``poll`` when ``active`` flips; the loop clears it
    once it has acted on the change.
    """

    active: bool
    changed: bool

    def poll(self) -> None: ...

    def close(self) -> None: ...


class GroupConsumer(Protocol):
    """The part of a confluent_kafka Consumer the elector uses."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: _Rebalance | None = ...,
        on_revoke: _Rebalance | None = ...,
        on_lost: _Rebalance | None = ...,
    ) -> None: ...

    def poll(self, timeout: float = ...) -> object: ...

    def close(self) -> None: ...


class _Rebalance(Protocol):
    def __call__(self, consumer: Consumer, partitions: list[TopicPartition], /) -> None: ...


class KafkaElector:
    """Leader election through a consumer group on the one-partition state topic."""

    def __init__(
        self,
        settings: Settings,
        group: str,
        state_topic: str,
        consumer: GroupConsumer | None = None,
    ) -> None:
        self.active = False
        self.changed = False
        self._consumer = consumer or Consumer(kafka.elector_config(settings, group))
        self._consumer.subscribe(
            [state_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )  # fmt: skip

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions and not self.active:
            self.active, self.changed = True, True
        elif not partitions and not self.active:
            log.info("standing by: another producer with the same producer id is active")

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions and self.active:
            self.active, self.changed = False, True

    def poll(self) -> None:
        # Messages of the state topic are read by kcron.state; here only the
        # membership matters, and poll() is what keeps it (and runs callbacks).
        self._consumer.poll(0)

    def close(self) -> None:
        self._consumer.close()  # leaves the group: a standby takes over at once
