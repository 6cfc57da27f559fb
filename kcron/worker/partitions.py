"""What this worker owns: assigned partitions, their generation, offsets, flow control. Pure.

Per partition, at most --prefetch runs are taken and not yet finished (queued,
running, held or being handed off); held retries count against their own
retry partition only, so they never pause the main topic. The loop applies
the pause and resume lists this returns to the consumer.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

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
        # overlap=forbid (kcron/worker/overlap.py): until when a partition's forbid
        # runs wait for its previous owner's revoke grace, and the partitions this
        # worker handed back in order since the last assignment. Kafka's eager
        # rebalance gives no one a partition between its revoke and the next
        # assignment, so one handed back and assigned again needs no wait.
        self._quiet: dict[PartitionKey, datetime] = {}
        self._handed_back: set[PartitionKey] = set()

    def assign(self, keys: Iterable[PartitionKey], quiet_until: datetime | None = None) -> None:
        """A new assignment; the consumer resumed all of it.

        Partitions new to this worker are quiet (for overlap=forbid runs) until
        ``quiet_until``; ones it handed back in the same rebalance keep theirs.
        """
        self.assigned = set(keys)
        self.generation += 1
        self.paused = set()
        quiet = {k: t for k, t in self._quiet.items() if k in self.assigned & self._handed_back}
        if quiet_until is not None:
            quiet.update((k, quiet_until) for k in self.assigned - self._handed_back)
        self._quiet, self._handed_back = quiet, set()

    def forget(self, keys: set[PartitionKey], *, lost: bool = False) -> None:
        """Revoked or lost: their outcomes are no longer ours to commit."""
        for key in keys:
            self._tracker.forget(key)
        if lost:  # someone else may hold them before they come back
            self._handed_back -= keys
        else:
            self._handed_back |= keys & self.assigned
        self.assigned -= keys
        self.paused -= keys

    def quiet_until(self, key: PartitionKey) -> datetime | None:
        """Until when overlap=forbid runs of ``key`` wait; None: no wait."""
        return self._quiet.get(key)

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
