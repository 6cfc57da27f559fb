"""Which offset is safe to commit, per partition. Pure bookkeeping.

Runs finish out of order when a worker runs several at once. Committing a
finished run's offset while an earlier one still runs would lose the earlier
one if the worker died, so only the contiguous finished prefix counts.
"""

from __future__ import annotations

from collections.abc import Hashable


class PartitionOffsets:
    """Offsets taken from one partition, in order; reports the committable position."""

    def __init__(self) -> None:
        self._pending: dict[int, bool] = {}  # offset -> finished; insertion order = offset order
        self._committable: int | None = None
        self._open = 0  # offsets taken and not finished; kept so in_flight is O(1)

    def taken(self, offset: int) -> None:
        if self._pending.get(offset) is not False:
            self._open += 1
        self._pending[offset] = False

    def finished(self, offset: int) -> int | None:
        """Mark ``offset`` done; return the new commit position if it moved."""
        if offset not in self._pending:
            return None
        if not self._pending[offset]:
            self._open -= 1
        self._pending[offset] = True
        moved = None
        # Only the finished prefix is walked, so a hung run does not make every
        # later finish rescan the runs queued behind it.
        while self._pending:
            first = next(iter(self._pending))
            if not self._pending[first]:
                break
            del self._pending[first]
            moved = first + 1
        if moved is not None:
            self._committable = moved
        return moved

    @property
    def in_flight(self) -> int:
        return self._open

    @property
    def committable(self) -> int | None:
        """The next offset to consume (Kafka's commit convention), or None."""
        return self._committable


class OffsetTracker:
    """PartitionOffsets for every assigned partition."""

    def __init__(self) -> None:
        self._parts: dict[Hashable, PartitionOffsets] = {}

    def taken(self, partition: Hashable, offset: int) -> None:
        self._parts.setdefault(partition, PartitionOffsets()).taken(offset)

    def finished(self, partition: Hashable, offset: int) -> int | None:
        part = self._parts.get(partition)
        return part.finished(offset) if part else None

    def in_flight(self, partition: Hashable | None = None) -> int:
        if partition is not None:
            part = self._parts.get(partition)
            return part.in_flight if part else 0
        return sum(p.in_flight for p in self._parts.values())

    def forget(self, partition: Hashable) -> None:
        """The partition was revoked: its outcomes are no longer ours to commit."""
        self._parts.pop(partition, None)
