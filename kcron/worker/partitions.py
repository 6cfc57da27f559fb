"""What this worker owns: assigned partitions, their generation, offsets, flow control. Pure.

Per partition, at most --prefetch runs are taken and not yet finished (queued,
running, held or being handed off); held retries count against their own
retry partition only, so they never pause the main topic. The loop applies
the pause and resume lists this returns to the consumer.
"""

from __future__ import annotations

from collections.abc import Iterable

from kcron.offsets import OffsetTracker
from kcron.worker.port import PartitionKey


class Partitions:
    def __init__(self, topic: str, retry_topic: str) -> None:
        self._topic = topic
        self._retry_topic = retry_topic
        self.assigned: set[PartitionKey] = set()
        self.paused: set[PartitionKey] = set()
        # Bumped on every assignment: a result or delivery report from an
        # earlier one belongs to offsets this worker no longer decides about,
        # even if the same partition came back to it (Kafka redelivers those).
        self.generation = 0
        self._tracker = OffsetTracker()

    def assign(self, keys: Iterable[PartitionKey]) -> None:
        """A new assignment; the consumer resumed all of it."""
        self.assigned = set(keys)
        self.generation += 1
        self.paused = set()

    def forget(self, keys: set[PartitionKey]) -> None:
        """Revoked or lost: their outcomes are no longer ours to commit."""
        for key in keys:
            self._tracker.forget(key)
        self.assigned -= keys
        self.paused -= keys

    def owns(self, key: PartitionKey, generation: int) -> bool:
        """Whether a job taken under ``generation`` is still this worker's to settle."""
        return key in self.assigned and generation == self.generation

    def taken(self, key: PartitionKey, offset: int) -> None:
        self._tracker.taken(key, offset)

    def finished(self, key: PartitionKey, offset: int) -> int | None:
        """Mark the offset done; the position to store if the committable prefix moved."""
        position = self._tracker.finished(key, offset)
        return position if key in self.assigned else None

    def in_flight(self, key: PartitionKey) -> int:
        return self._tracker.in_flight(key)

    def flow(self, limit: int) -> tuple[list[PartitionKey], list[PartitionKey]]:
        """Partitions to pause (``limit`` runs in flight) and to resume (half gone)."""
        load = self._tracker.in_flight
        pause = sorted(k for k in self.assigned - self.paused if load(k) >= limit)
        resume = sorted(k for k in self.paused & self.assigned if load(k) <= limit // 2)
        self.paused.update(pause)
        self.paused.difference_update(resume)
        return pause, resume

    def pause_all(self) -> list[PartitionKey]:
        self.paused = set(self.assigned)
        return sorted(self.assigned)

    def split(self, keys: Iterable[PartitionKey]) -> dict[str, list[int]]:
        """Partition numbers for logs: ``partitions`` of the main topic, and of its retry topic."""
        keys = list(keys)
        return {
            "partitions": sorted(p for t, p in keys if t == self._topic),
            "retry_partitions": sorted(p for t, p in keys if t == self._retry_topic),
        }
